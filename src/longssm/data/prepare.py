"""Tokenize a corpus once into a prepared dataset (``prepared.py`` has the layout): streamed, parallel, resumable.

The documents of the inputs (``sources.iter_pieces``) are grouped into batches of about ``BATCH_CHARS``
characters; a batch depends only on the inputs, never on the number of workers. Batches are tokenized by
``workers`` processes, at most two per worker in flight (memory stays bounded by a few batches, whatever the size
of the corpus), and written in order to the current shard. One EOS token follows every document (``default_eos``:
the tokenizer's own end-of-text token; for the byte tokenizer byte 0, NUL, which UTF-8 text never contains).
A shard closes at the end of the batch in which it reached ``shard_tokens``: it is fsynced, renamed into place and
recorded in ``progress.json`` with its hash and the batches consumed so far. A killed prepare rerun with the same
settings skips those batches without tokenizing them and continues, so the result is byte-identical to an
uninterrupted run. ``manifest.json`` is written last.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import __version__
from ..errors import UserError
from ..files import atomic_file, fsync_dir, write_text_atomic
from ..lock import HOLDER_FILE, locked_dir
from .prepared import DOCS, FORMAT, MANIFEST, PROGRESS, VERSION, read_manifest, token_dtype
from .sources import OnError, Piece, Source, Split, find_sources, iter_pieces, source_digest
from .tokenizer import ByteTokenizer, Tokenizer

BATCH_CHARS = 1 << 22
"""Characters of text per tokenization batch (~4 MB)."""
EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")
Eos = int | None | Literal["auto"]
Batch = list[tuple[Piece, bool]]
"""Pieces and whether each ends its document."""


def default_eos(tokenizer: Tokenizer) -> int | None:
    """The tokenizer's end-of-text token: the first of ``EOS_NAMES`` in its vocabulary (GPT-2: 50256); byte: 0."""
    if isinstance(tokenizer, ByteTokenizer):
        return 0
    vocab = tokenizer._tok.get_vocab(with_added_tokens=True)
    return next((vocab[name] for name in EOS_NAMES if name in vocab), None)


@dataclass
class Prepared:
    """What ``prepare_dataset`` did."""

    manifest: dict[str, Any]
    directory: Path
    seconds: float
    input_bytes: int
    """Text bytes tokenized by this call (0 when it was up to date)."""
    up_to_date: bool = False
    resumed_shards: int = 0


# ----------------------------------------------------------------------------------------------------------
# Tokenizing a batch (in a worker process or in this one).

_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = tokenizer


def encode_texts(tokenizer: Tokenizer, texts: list[str], dtype: np.dtype) -> list[np.ndarray]:
    """The token ids of each text, as arrays of ``dtype``."""
    if isinstance(tokenizer, ByteTokenizer):
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(dtype) for t in texts]
    return [np.asarray(e.ids, dtype=dtype) for e in tokenizer._tok.encode_batch(texts, add_special_tokens=False)]


def _encode_in_worker(texts: list[str], dtype: str) -> list[np.ndarray]:
    assert _worker_tokenizer is not None
    return encode_texts(_worker_tokenizer, texts, np.dtype(dtype))


class Encoder:
    """Tokenizes batches in order with ``workers`` processes (1: in this process), a bounded number in flight."""

    def __init__(self, tokenizer: Tokenizer, workers: int, dtype: np.dtype) -> None:
        self.tokenizer, self.workers, self.dtype = tokenizer, workers, dtype
        self.pool = (ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                         initargs=(tokenizer,)) if workers > 1 else None)

    def map(self, batches: Iterator[Batch]) -> Iterator[tuple[Batch, list[np.ndarray]]]:
        if self.pool is None:
            for batch in batches:
                yield batch, encode_texts(self.tokenizer, [p.text for p, _ in batch], self.dtype)
            return
        pending: list[tuple[Batch, Future]] = []
        for batch in batches:
            pending.append((batch, self.pool.submit(_encode_in_worker, [p.text for p, _ in batch], self.dtype.str)))
            if len(pending) >= 2 * self.workers:
                done, future = pending.pop(0)
                yield done, future.result()
        for done, future in pending:
            yield done, future.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------------------
# The stream of batches of one split.


def _selected(pieces: Iterator[Piece], fraction: float, keep_valid: bool) -> Iterator[Piece]:
    """The pieces of the documents of one side of the split: document i (0-based) is held out iff
    floor((i + 1)·f) > floor(i·f), i.e. exactly every 1/f-th document."""
    i = -1
    held_out = False
    for piece in pieces:
        if piece.starts_document:
            i += 1
            held_out = math.floor((i + 1) * fraction) > math.floor(i * fraction)
        if held_out == keep_valid:
            yield piece


def _with_ends(pieces: Iterator[Piece]) -> Iterator[tuple[Piece, bool]]:
    """Each piece and whether it is its document's last (one piece of look-ahead)."""
    previous = None
    for piece in pieces:
        if previous is not None:
            yield previous, piece.starts_document
        previous = piece
    if previous is not None:
        yield previous, True


def _batches(pieces: Iterator[Piece]) -> Iterator[list[tuple[Piece, bool]]]:
    """(piece, ends its document) in batches of about ``BATCH_CHARS`` characters (a function of the inputs only)."""
    batch: list[tuple[Piece, bool]] = []
    chars = 0
    for piece, ends in _with_ends(pieces):
        batch.append((piece, ends))
        chars += len(piece.text)
        if chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


# ----------------------------------------------------------------------------------------------------------
# Writing one split.


@dataclass
class SplitWriter:
    """Appends a split's tokens to shards; the resume record is ``record`` (saved in progress.json)."""

    directory: Path
    name: str
    dtype: np.dtype
    eos: int | None
    shard_tokens: int
    limit: int | None
    record: dict[str, Any]
    save: Any
    docs: list[int] = field(default_factory=list)
    current: Any = None
    current_tokens: int = 0
    hasher: Any = None

    def __post_init__(self) -> None:
        (self.directory / self.name).mkdir(parents=True, exist_ok=True)
        for tmp in (self.directory / self.name).glob("*.tmp"):
            tmp.unlink()
        for shard in self.record["shards"]:
            self.docs.extend(np.load(self.directory / shard["docs"]).tolist())
        self.first_doc = len(self.docs)
        """Where the document starts of the open shard begin in ``docs``."""

    @property
    def tokens(self) -> int:
        return int(self.record["tokens"]) + self.current_tokens

    @property
    def full(self) -> bool:
        return self.limit is not None and self.tokens >= self.limit

    def _shard_name(self) -> str:
        return f"{self.name}/tokens-{len(self.record['shards']):05d}.bin"

    def _write(self, ids: np.ndarray) -> None:
        if self.limit is not None:
            ids = ids[: max(self.limit - self.tokens, 0)]
        if not len(ids):
            return
        if self.current is None:
            self.current = open(self.directory / (self._shard_name() + ".tmp"), "wb")  # noqa: SIM115 (closed by _close_shard)
            self.hasher = hashlib.sha256()
        data = ids.astype(self.dtype, copy=False).tobytes()
        self.current.write(data)
        self.hasher.update(data)
        self.current_tokens += len(ids)

    def add(self, piece: Piece, ids: np.ndarray, ends_document: bool) -> None:
        if self.full:
            return
        if piece.starts_document:
            self.docs.append(self.tokens)
            self.record["documents"] += 1
        self._write(ids)
        if ends_document and self.eos is not None:
            self._write(np.array([self.eos]))

    def end_batch(self, final: bool = False) -> None:
        """Count a consumed batch; close the shard when it is full (or at the end)."""
        if not final:
            self.record["batches"] += 1
        if self.current is not None and (final or self.current_tokens >= self.shard_tokens or self.full):
            self._close_shard()

    def _close_shard(self) -> None:
        name = self._shard_name()
        self.current.flush()
        os.fsync(self.current.fileno())
        self.current.close()
        docs_name = name.replace(".bin", ".docs.npy")
        with atomic_file(self.directory / docs_name, "wb") as f:
            np.save(f, np.asarray(self.docs[self.first_doc :], dtype=np.int64))
        os.replace(self.directory / (name + ".tmp"), self.directory / name)
        fsync_dir(self.directory / self.name)
        self.record["shards"].append({"file": name, "tokens": self.current_tokens, "sha256": self.hasher.hexdigest(),
                                      "docs": docs_name, "batches": self.record["batches"]})
        self.record["tokens"] += self.current_tokens
        self.current, self.current_tokens, self.first_doc = None, 0, len(self.docs)
        self.save()

    def finish(self) -> dict[str, Any]:
        """Write docs.npy; the split's entry of the manifest."""
        if not self.record["tokens"]:
            raise UserError(f"the {self.name} split holds no text: give inputs with text (or a larger "
                            f"--valid-fraction)")
        with atomic_file(self.directory / self.name / DOCS, "wb") as f:
            np.save(f, np.asarray(self.docs, dtype=np.int64))
        shards = [{"file": s["file"], "tokens": s["tokens"], "sha256": s["sha256"]} for s in self.record["shards"]]
        self.record["result"] = {"tokens": self.record["tokens"], "documents": self.record["documents"],
                                 "shards": shards}
        self.save()
        for shard in self.record["shards"]:
            (self.directory / shard["docs"]).unlink(missing_ok=True)
        return self.record["result"]


# ----------------------------------------------------------------------------------------------------------
# The command.


def _settings(tokenizer: Tokenizer, sources: list[Source], valid_sources: list[Source], *, split: Split,
              text_field: str, eos: int | None, hf_split: str, limit_tokens: int | None, valid_fraction: float,
              shard_tokens: int, progress: bool) -> dict[str, Any]:
    """Everything the result depends on: equal settings give byte-identical datasets."""
    def described(group: list[Source], label: str) -> list[dict[str, Any]]:
        from tqdm.auto import tqdm

        bar = tqdm(group, desc=f"hashing {label}", unit="file", disable=not progress or len(group) < 2, leave=False)
        return [{"path": str(s.path), "kind": s.kind, "size": s.size, "sha256": source_digest(s)} for s in bar]

    valid: Any = None
    if valid_sources:
        valid = {"sources": described(valid_sources, "--valid inputs")}
    elif valid_fraction:
        valid = {"fraction": valid_fraction}
    return {"format": FORMAT, "version": VERSION,
            "tokenizer": {"name": tokenizer.name, "identity": tokenizer.identity, "vocab_size": tokenizer.vocab_size},
            "eos": eos, "dtype": token_dtype(tokenizer.vocab_size).name, "split": split, "text_field": text_field,
            "hf_split": hf_split, "sources": described(sources, "inputs"), "valid": valid,
            "limit_tokens": limit_tokens, "shard_tokens": shard_tokens}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in new if old.get(k) != new[k]]
    shown = []
    for k in keys:
        if k == "sources":
            shown.append("the inputs (files or their contents)")
        else:
            shown.append(f"{k} {json.dumps(old.get(k))} \u2260 {json.dumps(new[k])}")
    return ", ".join(shown)


def _our_entries(out: Path) -> list[Path]:
    return [out / name for name in (MANIFEST, PROGRESS, "train", "valid") if (out / name).exists()]


def _start(out: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The progress record to continue (a fresh one for a new dataset); None when ``out`` is complete and up to
    date. Refuses a directory of other settings (unless ``overwrite``) or one that longssm did not write."""
    complete = (out / MANIFEST).is_file()
    old: dict[str, Any] | None = None
    if complete:
        old = read_manifest(out)
    elif (out / PROGRESS).is_file():
        old = json.loads((out / PROGRESS).read_text(encoding="utf-8"))
    if old is not None:
        same = {k: old.get(k) for k in settings} == settings
        if same and complete:
            return None
        if same:
            return old
        if not overwrite:
            raise UserError(f"--out {out} holds a {'prepared dataset' if complete else 'prepare'} with other settings "
                            f"({_differences(old, settings)}): use --overwrite to start again, or another --out")
    others = [p.name for p in out.iterdir() if p not in _our_entries(out) and p.name != HOLDER_FILE]
    if others:
        raise UserError(f"--out {out} holds files longssm prepare did not write ({', '.join(sorted(others)[:3])}): "
                        f"choose an empty or new directory")
    for entry in _our_entries(out):
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return {**settings, "splits": {}}


def _split_pieces(name: str, settings: dict[str, Any], sources: list[Source], valid_sources: list[Source],
                  on_error: OnError) -> Iterator[Piece]:
    kwargs = {"text_field": settings["text_field"], "split": settings["split"], "on_error": on_error,
              "hf_split": settings["hf_split"]}
    if name == "valid" and valid_sources:
        return iter_pieces(valid_sources, **kwargs)
    pieces = iter_pieces(sources, **kwargs)
    fraction = (settings["valid"] or {}).get("fraction", 0.0)
    return _selected(pieces, fraction, keep_valid=name == "valid") if fraction else pieces


def _write_split(out: Path, name: str, record: dict[str, Any], settings: dict[str, Any], encoder: Encoder,
                 pieces: Iterator[Piece], save: Any, bar: Any) -> tuple[dict[str, Any], int]:
    """Tokenize and write split ``name`` from where ``record`` left it; (its manifest entry, text bytes read)."""
    if "result" in record:
        return record["result"], 0
    limit = settings["limit_tokens"] if name == "train" else None
    writer = SplitWriter(out, name, np.dtype(settings["dtype"]), settings["eos"], settings["shard_tokens"], limit,
                         record, save)
    done = record["shards"][-1]["batches"] if record["shards"] else 0
    record["batches"], record["tokens"] = done, sum(s["tokens"] for s in record["shards"])
    batches = _batches(pieces)
    for _ in range(done):  # complete shards: read, not tokenized
        next(batches, None)
    read = 0
    for batch, ids in encoder.map(batches):
        for (piece, ends), piece_ids in zip(batch, ids, strict=True):
            writer.add(piece, piece_ids, ends)
        nbytes = sum(len(p.text) for p, _ in batch)
        read += nbytes
        bar.update(nbytes)
        bar.set_postfix_str(f"{writer.tokens / max(bar.format_dict['elapsed'], 1e-9) / 1e6:.2f}M tok/s", refresh=False)
        writer.end_batch()
        if writer.full:
            break
    writer.end_batch(final=True)
    return writer.finish(), read


def _write_all(out: Path, record: dict[str, Any], settings: dict[str, Any], tokenizer: Tokenizer,
               workers: int | None, sources: list[Source], valid_sources: list[Source], on_error: OnError, save: Any,
               progress: bool) -> tuple[dict[str, Any], int]:
    """Every split (valid first); (the manifest's splits, text bytes read). A bad input found before the first
    shard of a new dataset is complete leaves nothing behind."""
    from tqdm.auto import tqdm

    names = (["valid"] if settings["valid"] else []) + ["train"]
    total = sum(s.size for s in sources) + sum(s.size for s in valid_sources)
    fresh = not record["splits"]
    encoder = Encoder(tokenizer, workers or os.cpu_count() or 1, np.dtype(settings["dtype"]))
    splits, read = {}, 0
    try:
        with tqdm(total=total, desc=f"preparing {out.name}", unit="B", unit_scale=True, disable=not progress,
                  leave=False) as bar:
            for name in names:
                part = record["splits"].setdefault(name, {"shards": [], "documents": 0})
                pieces = _split_pieces(name, settings, sources, valid_sources, on_error)
                splits[name], n = _write_split(out, name, part, settings, encoder, pieces, save, bar)
                read += n
    except UserError:
        if fresh and not any(part["shards"] for part in record["splits"].values()):
            for entry in _our_entries(out):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        raise
    finally:
        encoder.close()
    return splits, read


def prepare_dataset(inputs: Sequence[str], tokenizer: Tokenizer, out: str | Path, *, split: Split = "none",
                    text_field: str = "text", eos: Eos = "auto", workers: int | None = None,
                    limit_tokens: int | None = None, valid_fraction: float = 0.0, valid: Sequence[str] = (),
                    on_error: OnError = "stop", hf_split: str = "train", shard_tokens: int = 1 << 28,
                    overwrite: bool = False, progress: bool = True, wait: bool = False) -> Prepared:
    """Tokenize ``inputs`` into the prepared dataset directory ``out`` (see the module docstring); continues an
    interrupted prepare of the same settings; a no-op when ``out`` is already complete with them. ``wait``: wait
    for another process preparing ``out`` (a shared cache) instead of failing."""

    if not 0 <= valid_fraction < 1:
        raise UserError(f"--valid-fraction must be in [0, 1); got {valid_fraction}")
    if valid_fraction and valid:
        raise UserError("give --valid-fraction or --valid, not both")
    started = time.perf_counter()
    sources, valid_sources = find_sources(inputs), find_sources(valid) if valid else []
    eos_id = default_eos(tokenizer) if eos == "auto" else eos
    if eos_id is not None and not 0 <= eos_id < tokenizer.vocab_size:
        raise UserError(f"--eos {eos_id} is not a token id of tokenizer {tokenizer.name!r} (0 … "
                        f"{tokenizer.vocab_size - 1})")
    settings = _settings(tokenizer, sources, valid_sources, split=split, text_field=text_field, eos=eos_id,
                         hf_split=hf_split, limit_tokens=limit_tokens, valid_fraction=valid_fraction,
                         shard_tokens=shard_tokens, progress=progress)
    out = Path(out)
    with locked_dir(out, "--out", wait=wait):
        record = _start(out, settings, overwrite)
        if record is None:
            return Prepared(read_manifest(out), out, time.perf_counter() - started, 0, up_to_date=True)
        resumed = sum(len(s["shards"]) for s in record["splits"].values())

        def save() -> None:
            write_text_atomic(out / PROGRESS, json.dumps(record, indent=1))

        save()
        splits, read = _write_all(out, record, settings, tokenizer, workers, sources, valid_sources, on_error, save,
                                  progress)
        manifest = {**settings, "longssm": __version__, "splits": splits}
        write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        (out / PROGRESS).unlink()
        fsync_dir(out)
    return Prepared(manifest, out, time.perf_counter() - started, read, resumed_shards=resumed)
