"""The data a run reads: a 1-D token array plus the offsets where documents start.

Three kinds: a prepared dataset directory (``longssm prepare``, ``prepared.py``); a text file, prepared into the
user's cache by the same code (a document is a WikiText article: it starts at a top-level heading line
`` = Title = ``; each article is tokenized separately, so document starts are exact token offsets; no separator
token, as in earlier versions); a ``.npy`` token file (one document).
"""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import sha256_file
from ..paths import cache_path, resolve_path
from .prepare import prepare_dataset
from .prepared import MANIFEST, Corpus, Role, is_prepared, open_prepared
from .sources import HEADING
from .task_stream import is_synthetic, synthetic_corpus
from .tokenizer import Tokenizer

__all__ = ["Corpus", "load_corpus", "split_documents"]

CACHE_FORMAT = "prepared-v1"
"""Part of a cached text file's key: a cache entry is a prepared dataset directory."""


def split_documents(text: str) -> list[str]:
    """WikiText-style text cut into articles at top-level headings (other text is one document): the reference
    that ``sources.iter_pieces(split="wikitext")`` is tested against."""
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


def load_corpus(
    spec: str, tokenizer: Tokenizer, cache_dir: str | Path | None = None, progress: bool = True,
    role: Role = "train",
) -> Corpus:
    """The corpus ``spec`` names: a task stream (``synthetic:<task>?...``, ``task_stream.py``), a prepared dataset
    directory (``longssm prepare``; ``role`` picks its train or valid split, or name ``DIR/train``, ``DIR/valid``),
    a ``.npy`` token file (one document), or a text file, which is prepared once (WikiText headings split documents,
    no separator token: the same tokens as a file read whole, article by article) into ``cache_dir`` (None: the
    user's cache directory, ``paths.user_cache_dir``)."""
    if is_synthetic(spec):
        return synthetic_corpus(spec, tokenizer, role)
    path = resolve_path(spec)
    if is_prepared(path):
        return open_prepared(spec, tokenizer, role)
    if path.is_dir():
        raise UserError(f"data {spec} is a directory but not a prepared dataset (make one with longssm prepare)")
    if not path.exists():
        raise UserError(f"data file not found: {spec}")
    if not path.is_file():
        raise UserError(f"data file {spec} is {special_file_kind(path)}, not a regular file (give a text file, a "
                        f".npy token file or a prepared directory)")
    if path.stat().st_size == 0:
        raise UserError(f"data file is empty: {spec}")
    if path.suffix == ".npy":
        return _token_file(path, spec, tokenizer)
    return _cached_text(path, spec, tokenizer, cache_dir, progress)


def _token_file(path: Path, spec: str, tokenizer: Tokenizer) -> Corpus:
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


def _cached_text(path: Path, spec: str, tokenizer: Tokenizer, cache_dir: str | Path | None,
                 progress: bool) -> Corpus:
    """A text file through the same streaming ``prepare_dataset``, into the cache entry of (content, tokenizer).
    Its digest is that of (content, tokenizer), as before prepared caches: it does not change with the file's path,
    the cache's location or longssm's version."""
    content = sha256_file(path)
    key = hashlib.sha256((content + tokenizer.identity + CACHE_FORMAT).encode()).hexdigest()[:20]
    out = cache_path(cache_dir) / key
    if not (out / MANIFEST).is_file():
        try:
            prepare_dataset([str(path)], tokenizer, out, split="wikitext", eos=None, workers=1, progress=progress,
                            wait=True)
        except UserError as e:
            if "holds no text" in str(e):
                raise UserError(f"data file has no text: {spec}") from None
            if "not UTF-8" in str(e):
                raise UserError(f"data file {spec} is not UTF-8 text (give a text file, a .npy token file or a "
                                f"prepared directory)") from None
            raise
    prepared = open_prepared(str(out), tokenizer, "train")
    digest = hashlib.sha256((content + tokenizer.identity).encode()).hexdigest()[:20]
    return Corpus(prepared.tokens, prepared.doc_starts, str(path), digest)
