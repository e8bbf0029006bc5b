"""Evaluation results cached per (checkpoint hash, data hash, metric, L, settings), so re-plotting never recomputes.

One small JSON file per entry: ``<cache_dir>/<metric>/L<length>-<key>.json`` where key hashes the model file's
SHA-256, the corpus digest and every setting that changes the numbers (not chunk size or device: the chunked
recurrence is exact). Files are written atomically; a corrupt file is treated as a miss.

Several processes (``torchrun``, ``shard``): an entry is a hit only when every process reads it (one host-side
all-reduce per entry), so that all of them compute it, and take part in its collectives, or none does; only rank 0
writes the files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import UserError
from ..files import sha256_file, write_text_atomic
from ..runtime.distributed import ALONE, Shard
from .registry import MetricResult

T = TypeVar("T")
R = TypeVar("R", bound=MetricResult)


def file_hash(path: str | Path) -> str:
    """SHA-256 (first 16 hex digits) of a file."""
    return sha256_file(path)[:16]


def model_hash(weights: str | Path, model_config: dict) -> str:
    """The model's identity for the cache: its weights file and its architecture config. A calibrated run shares
    its source's weights byte for byte but not its Δ/A scales, so the config must be part of the key."""
    blob = json.dumps({"weights": file_hash(weights), "model": model_config}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class EvalCache:
    """``cache.get_or_compute(metric, L, settings, compute)``; ``directory=None`` disables caching.

    ``hits`` and ``misses`` count the entries read and computed (with caching off, every entry is a miss); they are
    the same in every process of ``shard``.
    """

    def __init__(self, directory: str | Path | None, model_hash: str, data_hash: str, shard: Shard = ALONE) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.model_hash, self.data_hash = model_hash, data_hash
        self.shard = shard
        self.hits = 0
        self.misses = 0

    def path(self, metric: str, length: int, settings: dict[str, Any]) -> Path:
        assert self.directory is not None
        blob = json.dumps({"model": self.model_hash, "data": self.data_hash, "metric": metric, "L": length,
                           **settings}, sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:20]
        return self.directory / metric / f"L{length}-{key}.json"

    def contains(self, metric: str, length: int, settings: dict[str, Any]) -> bool:
        """Whether an entry is stored (it may still turn out corrupt and be recomputed)."""
        return self.directory is not None and self.path(metric, length, settings).is_file()

    def get_or_compute(self, metric: str, length: int, settings: dict[str, Any], compute: Callable[[], Any],
                       parse: Callable[[Any], T] = lambda value: value) -> T:
        """The stored value of (metric, L, settings), else ``compute()`` (JSON-serialisable), stored.
        Returns ``parse(value)``; a stored value that ``parse`` rejects with ``UserError`` counts as corrupt.
        Several processes: a hit only when every process reads the entry, else every process computes it."""
        if self.directory is None:
            self.misses += 1
            return parse(compute())
        path = self.path(metric, length, settings)
        found, value = self._read(path, parse)
        if self.shard.all(found):
            self.hits += 1
            return value
        self.misses += 1
        value = compute()
        self.put(path, metric, length, settings, value)
        return parse(value)

    def result(self, metric: str, length: int, settings: dict[str, Any], result_type: type[R],
               compute: Callable[[], R]) -> R:
        """``get_or_compute`` for a whole metric result, stored as its JSON form."""
        return self.get_or_compute(metric, length, settings, lambda: compute().to_json(),
                                   lambda value: result_type.from_json(value, f"cached {metric}"))

    @staticmethod
    def _read(path: Path, parse: Callable[[Any], T]) -> tuple[bool, T | None]:
        """(True, parsed value) of a readable entry; (False, None) for a missing or corrupt one."""
        if not path.is_file():
            return False, None
        try:
            return True, parse(json.loads(path.read_text())["value"])
        except (json.JSONDecodeError, KeyError, OSError, UserError):
            return False, None

    def put(self, path: Path, metric: str, length: int, settings: dict[str, Any], value: Any) -> None:
        """Store an entry (rank 0 only; nothing when the directory is not writable)."""
        if not self.shard.is_main:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps({"model": self.model_hash, "data": self.data_hash, "metric": metric,
                                                "L": length, "settings": settings, "value": value}))
        except OSError:  # a read-only run directory: evaluate without caching
            pass
