"""A prepared dataset: what ``longssm prepare`` writes and training and evaluation read, in constant memory.

Layout of a prepared directory ``DIR``::

    DIR/manifest.json            written last: its presence means the dataset is complete
    DIR/train/tokens-00000.bin   flat little-endian token ids, no header: uint16 when the vocabulary fits, else uint32
    DIR/train/docs.npy           int64 offset of every document's first token in the split (docs[0] == 0)
    DIR/valid/...                the same for a held-out split (``--valid-fraction`` or ``--valid``)
    DIR/progress.json            the writer's record of complete shards while it runs (gone when complete)

The shards of a split are one virtual token array (``TokenArray``): opened as read-only memmaps, read only where
sliced, so a corpus of 10^10 tokens costs the memory of its document index and nothing per token. When the
manifest names an ``eos`` token, one follows every document.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import UserError
from ..paths import resolve_path
from .tokenizer import Tokenizer

FORMAT = "longssm-prepared"
VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
DOCS = "docs.npy"
SPLITS = ("train", "valid")
Role = Literal["train", "valid"]


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (little-endian)."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


class TokenArray:
    """The shards of one split as one read-only 1-D array: ``len``, integer indexing and slices (step 1) that may
    cross shards; a slice is a copy of only the tokens it covers."""

    def __init__(self, files: list[Path], lengths: list[int], dtype: np.dtype) -> None:
        self.files, self.dtype = files, np.dtype(dtype)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.ends = np.cumsum(self.lengths)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def _shard(self, i: int) -> np.ndarray:
        if i not in self._maps:
            n = int(self.lengths[i])
            self._maps[i] = (np.memmap(self.files[i], dtype=self.dtype, mode="r", shape=(n,)) if n
                             else np.zeros(0, self.dtype))
        return self._maps[i]

    def __getitem__(self, key: slice | int) -> Any:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"index {key} out of range for {n} tokens")
            return int(self[i : i + 1][0])
        start, stop, step = key.indices(n)
        if step != 1:
            raise ValueError("TokenArray slices take step 1")
        if stop <= start:
            return np.zeros(0, self.dtype)
        first = int(np.searchsorted(self.ends, start, side="right"))
        last = int(np.searchsorted(self.ends, stop - 1, side="right"))
        parts = []
        for i in range(first, last + 1):
            base = int(self.ends[i] - self.lengths[i])
            parts.append(self._shard(i)[max(start - base, 0) : min(stop, int(self.ends[i])) - base])
        return np.array(parts[0]) if len(parts) == 1 else np.concatenate(parts)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """All tokens in memory (for tests and small splits; training and evaluation only slice)."""
        out = self[:]
        return out if dtype is None else out.astype(dtype)


@dataclass
class Corpus:
    """The data a run reads: token ids and where its documents start."""

    tokens: np.ndarray | TokenArray
    """Token ids, shape (N,): a prepared split's shards (``TokenArray``) or a ``.npy`` memmap; read by slicing
    only (``len`` and ``tokens[a:b]``), so nothing is loaded whole."""
    doc_starts: np.ndarray
    """Sorted token offsets where a document starts (0 first), int64, shape (documents,)."""
    source: str
    """What it was read from (a split directory ``DIR/train``, a text or ``.npy`` file)."""
    digest: str
    """The data's identity: keys evaluation caches and is saved in checkpoints (a resume on other data is refused).
    A prepared split: ``sha256(manifest.json)[:20]-split``."""

    def __len__(self) -> int:
        return len(self.tokens)


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a complete prepared directory; ``UserError`` for an unfinished or foreign one."""
    path = directory / MANIFEST
    if not path.is_file():
        if (directory / PROGRESS).is_file():
            raise UserError(f"{directory} is an unfinished prepare: rerun the same longssm prepare command to finish "
                            f"it")
        raise UserError(f"{directory} is not a prepared dataset (no {MANIFEST}; make one with longssm prepare)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a prepared dataset's manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not a longssm prepared dataset's manifest (no \"format\": \"{FORMAT}\")")
    if manifest.get("version") != VERSION:
        raise UserError(f"{directory} was prepared by another longssm (format version {manifest.get('version')!r}; "
                        f"this one reads {VERSION}): prepare it again")
    return manifest


def is_prepared(path: Path) -> bool:
    """Whether ``path`` is a prepared directory (complete or not) or one split of one."""
    if not path.is_dir():
        return False
    if (path / MANIFEST).is_file() or (path / PROGRESS).is_file():
        return True
    return path.name in SPLITS and ((path.parent / MANIFEST).is_file() or (path.parent / PROGRESS).is_file())


def manifest_digest(directory: Path) -> str:
    """sha256 of the manifest's bytes (20 hex digits): the dataset's identity."""
    return hashlib.sha256((directory / MANIFEST).read_bytes()).hexdigest()[:20]


def _split_of(path: Path, role: Role) -> tuple[Path, str]:
    """(dataset directory, split name) for a spec naming a dataset or one of its splits."""
    if path.name in SPLITS and not (path / MANIFEST).is_file() and not (path / PROGRESS).is_file():
        return path.parent, path.name
    return path, role


def _shard_table(directory: Path, manifest: dict[str, Any], split: str) -> tuple[np.dtype, int, list[tuple[str, int]]]:
    """(dtype, tokens, [(shard file, tokens)]) of ``split`` as the manifest records it; ``UserError`` for a manifest
    that does not have that shape (a damaged or hand-edited file)."""
    try:
        dtype = np.dtype(manifest["dtype"])
        info = manifest["splits"][split]
        n = int(info["tokens"])
        shards = [(str(s["file"]), int(s["tokens"])) for s in info["shards"]]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{directory / MANIFEST} is damaged ({type(e).__name__}: {e}): prepare the dataset again") \
            from None
    if dtype.name not in ("uint16", "uint32"):
        raise UserError(f"{directory / MANIFEST}: token dtype {dtype.name} is not uint16 or uint32")
    for file, count in shards:
        if Path(file).is_absolute() or ".." in Path(file).parts or count < 0:
            raise UserError(f"{directory / MANIFEST}: shard entry {file!r} ({count} tokens) is not a file of the "
                            f"dataset")
    if sum(count for _, count in shards) != n:
        raise UserError(f"{directory / MANIFEST}: the shards of split {split} hold "
                        f"{sum(count for _, count in shards)} tokens, not its {n}")
    return dtype.newbyteorder("<"), n, shards


def _check_shards(directory: Path, shards: list[tuple[str, int]], dtype: np.dtype) -> list[Path]:
    """The shard files, each checked to exist with exactly its tokens × itemsize bytes (one ``stat`` each)."""
    files = []
    for file, count in shards:
        f = directory / file
        if not f.is_file():
            raise UserError(f"shard {f} is missing (prepare again)")
        size, expected = f.stat().st_size, count * dtype.itemsize
        if size != expected:
            raise UserError(f"shard {f} holds {size} bytes; the manifest says {expected} (a truncated or foreign "
                            f"file: prepare again)")
        files.append(f)
    return files


def _read_docs(path: Path, n_tokens: int) -> np.ndarray:
    """The document index: int64, 1-D, sorted, within [0, n_tokens), starting at 0 (empty only for no tokens)."""
    try:
        docs = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"cannot read the document index {path}: {e}") from None
    ok = docs.ndim == 1 and docs.dtype == np.int64 and (len(docs) > 0 or n_tokens == 0)
    if ok and len(docs):
        ok = docs[0] == 0 and docs[-1] < n_tokens and not bool(np.any(np.diff(docs) < 0))
    if not ok:
        raise UserError(f"document index {path} is not sorted int64 offsets from 0 within the split's {n_tokens} "
                        f"tokens (prepare again)")
    return docs


def open_prepared(spec: str, tokenizer: Tokenizer, role: Role) -> Corpus:
    """The split of prepared dataset ``spec`` that ``role`` reads: ``DIR`` (role train: its train split; role
    valid: its valid split) or ``DIR/train``, ``DIR/valid``.

    Costs O(shards + documents): one ``stat`` per shard and the document index; no token is read. ``UserError``
    (one line) for an unfinished, foreign or damaged dataset and for one prepared with another tokenizer."""
    directory, split = _split_of(resolve_path(spec), role)
    manifest = read_manifest(directory)
    made_with = manifest.get("tokenizer")
    made_with = made_with if isinstance(made_with, dict) else {}
    if made_with.get("identity") != tokenizer.identity:
        raise UserError(f"{directory} was prepared with tokenizer {made_with.get('name')!r}; this run's data.tokenizer "
                        f"is {tokenizer.name!r}")
    if split not in (manifest.get("splits") or {}):
        raise UserError(f"{directory} has no {split} split (prepare it with --valid-fraction or --valid, or give "
                        f"{directory / 'train'})")
    dtype, n, shards = _shard_table(directory, manifest, split)
    files = _check_shards(directory, shards, dtype)
    docs = _read_docs(directory / split / DOCS, n)
    tokens = TokenArray(files, [count for _, count in shards], dtype)
    return Corpus(tokens, docs, str(directory / split), f"{manifest_digest(directory)}-{split}")
