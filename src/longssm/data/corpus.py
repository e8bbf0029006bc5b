"""Text → token ids, cached as numpy memmaps keyed by a hash of the text file and the tokenizer.

A corpus is a 1-D token array plus the offsets where documents start. For WikiText, a document is an
article: it starts at a top-level heading line `` = Title = ``. Each article is tokenized separately and
the ids are concatenated, so document starts are exact token offsets. Token files (``.npy``) are read
as they are (one document).
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_file, sha256_file, write_text_atomic
from ..paths import cache_path, resolve_path
from .tokenizer import Tokenizer

HEADING = re.compile(r"^ = [^=].* = $")


@dataclass
class Corpus:
    tokens: np.ndarray
    """Token ids, shape (N,), uint16 when the vocabulary fits, else int32 (often a read-only memmap)."""
    doc_starts: np.ndarray
    """Sorted token offsets where a document starts (always includes 0), int64."""
    source: str
    """The file it came from."""
    digest: str
    """Hash of (file content, tokenizer): the cache key, also used to key evaluation caches."""

    def __len__(self) -> int:
        return len(self.tokens)


def split_documents(text: str) -> list[str]:
    """Split WikiText-style text into articles at top-level headings; other text is one document."""
    lines = text.splitlines(keepends=True)
    docs: list[str] = []
    current: list[str] = []
    for line in lines:
        if HEADING.match(line.rstrip("\n")) and any(x.strip() for x in current):
            docs.append("".join(current))
            current = []
        current.append(line)
    if current:
        docs.append("".join(current))
    return docs


def special_file_kind(path: Path) -> str:
    """What a path that exists but is neither a regular file nor a directory is: "a character device" (``/dev/null``),
    "a named pipe", ..."""
    mode = path.stat().st_mode
    kinds = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _atomic_save(path: Path, array: np.ndarray) -> None:
    with atomic_file(path, "wb") as f:
        np.save(f, array)


def load_corpus(
    spec: str, tokenizer: Tokenizer, cache_dir: str | Path | None = None, progress: bool = True
) -> Corpus:
    """Tokenize ``spec`` (a text file, or a ``.npy`` token file) once; later calls read the memmap cached in
    ``cache_dir`` (None: the user's cache directory, ``paths.user_cache_dir``)."""
    path = resolve_path(spec)
    if path.is_dir():
        raise UserError(f"data file {spec} is a directory, not a file")
    if not path.exists():
        raise UserError(f"data file not found: {spec}")
    if not path.is_file():
        raise UserError(f"data file {spec} is {special_file_kind(path)}, not a regular file (give a text file or a "
                        f".npy token file)")
    if path.stat().st_size == 0:
        raise UserError(f"data file is empty: {spec}")
    if path.suffix == ".npy":
        try:
            tokens = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise UserError(f"cannot read token file {spec}: {e}") from None
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise UserError(f"token file {spec} must hold a 1-D integer array; got {tokens.dtype} {tokens.shape}")
        if len(tokens) and int(tokens.max()) >= tokenizer.vocab_size:
            raise UserError(f"token file {spec} has id {int(tokens.max())} >= vocabulary size {tokenizer.vocab_size}")
        if len(tokens) and int(tokens.min()) < 0:
            raise UserError(f"token file {spec} has a negative id ({int(tokens.min())}); ids are 0 … vocabulary "
                            f"size − 1")
        return Corpus(tokens, np.zeros(1, dtype=np.int64), str(path), sha256_file(path)[:16] + "-npy")

    digest = hashlib.sha256((sha256_file(path) + tokenizer.identity).encode()).hexdigest()[:20]
    cache = cache_path(cache_dir)
    tok_file, doc_file = cache / f"{digest}.tokens.npy", cache / f"{digest}.docs.npy"
    if tok_file.is_file() and doc_file.is_file():
        return Corpus(np.load(tok_file, mmap_mode="r"), np.load(doc_file), str(path), digest)

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"data file {spec} is not UTF-8 text (give a text file or a .npy token file)") from None
    if not text.strip():
        raise UserError(f"data file has no text: {spec}")
    docs = split_documents(text)
    ids: list[list[int]] = []
    from tqdm.auto import tqdm

    batch = 256
    for i in tqdm(range(0, len(docs), batch), desc=f"tokenizing {path.name}", disable=not progress, leave=False):
        ids.extend(tokenizer.encode_batch(docs[i : i + batch]))
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.int32
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    tokens = np.fromiter((t for doc in ids for t in doc), dtype=dtype, count=int(lengths.sum()))
    doc_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    doc_starts = np.unique(doc_starts[doc_starts < len(tokens)])
    cache.mkdir(parents=True, exist_ok=True)
    _atomic_save(doc_file, doc_starts)
    _atomic_save(tok_file, tokens)
    info = {"source": str(path), "tokenizer": tokenizer.identity, "tokens": len(tokens)}
    write_text_atomic(cache / f"{digest}.json", json.dumps(info))
    return Corpus(np.load(tok_file, mmap_mode="r"), doc_starts, str(path), digest)
