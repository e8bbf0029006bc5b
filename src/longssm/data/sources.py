"""A corpus's input files → the text of its documents, streamed: what ``longssm prepare`` reads.

Kinds of input (by suffix; a directory is searched recursively, hidden entries skipped, a glob is expanded):

- text (any other suffix): one document per file, or ``split="wikitext"`` (a document starts at a top-level
  heading line `` = Title = ``), or ``split="blank-lines"`` (a run of blank lines ends a document);
- ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``: one JSON object per line, a document per line (``text_field``);
- ``.parquet``: a document per row of the ``text_field`` column (``pyarrow``);
- a Hugging Face dataset saved with ``save_to_disk`` (a directory with ``dataset_info.json`` or
  ``dataset_dict.json``): a document per row (``datasets.load_from_disk``).

Memory stays bounded: text is read a line at a time, and a document longer than ``piece_chars`` characters is
yielded in pieces cut only before a line that starts with a character other than whitespace, or with one space
and then such a character (``cut_allowed``). Tokenizing the pieces separately gives the tokens of the whole
document for the byte tokenizer and for GPT-2's byte-level BPE, whose pre-tokenizer never joins a newline with
the word that follows it (other tokenizers may differ at the cuts, about one token per ``piece_chars``).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import UserError, first_line
from ..paths import resolve_path

SourceKind = Literal["text", "jsonl", "parquet", "hf"]
Split = Literal["none", "wikitext", "blank-lines"]
OnError = Literal["stop", "skip"]
HEADING = re.compile(r"^ = [^=].* = $")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
HF_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
EXTRA = "pip install 'longssm[corpus]'"


@dataclass(frozen=True)
class Source:
    """One input of a corpus."""

    path: Path
    """Absolute path (a directory for a Hugging Face dataset)."""
    kind: SourceKind
    size: int
    """Bytes on disk (a Hugging Face dataset: of all its files)."""


@dataclass
class Piece:
    """A document, or one piece of a long one."""

    text: str
    starts_document: bool
    """True for the first piece of every document."""
    where: str
    """Where it starts, for messages: ``FILE:LINE`` or ``FILE row N``."""


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _kind(path: Path) -> SourceKind:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return "parquet" if name.endswith(".parquet") else "text"


def _is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in HF_MARKERS)


def _files_under(directory: Path) -> list[Path]:
    """Regular files under ``directory`` (sorted, hidden entries skipped); a dataset directory counts as one."""
    found: list[Path] = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        if _is_hf_dataset(entry):
            found.append(entry)
        elif entry.is_dir():
            found.extend(_files_under(entry))
        elif entry.is_file():
            found.append(entry)
    return found


def _source(path: Path) -> Source:
    if _is_hf_dataset(path):
        files = [f for f in sorted(path.rglob("*")) if f.is_file()]
        return Source(path, "hf", sum(f.stat().st_size for f in files))
    return Source(path, _kind(path), path.stat().st_size)


def find_sources(inputs: Sequence[str]) -> list[Source]:
    """The input files named by ``inputs`` (files, directories, globs), in order, each once."""
    if not inputs:
        raise UserError("no input given: name text, .jsonl(.gz/.zst) or .parquet files, directories or globs")
    paths: list[Path] = []
    for spec in inputs:
        if any(c in spec for c in "*?[") and not Path(spec).exists():
            matched = sorted(glob.glob(spec, recursive=True))
            if not matched:
                raise UserError(f"input {spec}: no file matches this pattern")
            candidates = [Path(m) for m in matched]
        else:
            candidates = [resolve_path(spec)]
        for path in candidates:
            if not path.exists():
                raise UserError(f"input not found: {path}")
            if path.is_dir() and not _is_hf_dataset(path):
                inside = _files_under(path)
                if not inside:
                    raise UserError(f"input directory {path} holds no files")
                paths.extend(inside)
            elif path.is_dir() or path.is_file():
                paths.append(path)
            else:
                raise UserError(f"input {path} is not a regular file or a directory")
    unique = list(dict.fromkeys(p.absolute() for p in paths))
    return [_source(p) for p in unique]


def source_digest(source: Source) -> str:
    """sha256 (hex) of the source's bytes; a Hugging Face dataset: of its files' names and bytes, in order."""
    h = hashlib.sha256()
    files = [f for f in sorted(source.path.rglob("*")) if f.is_file()] if source.kind == "hf" else [source.path]
    for f in files:
        if source.kind == "hf":
            h.update(str(f.relative_to(source.path)).encode() + b"\0")
        with open(f, "rb") as stream:
            while block := stream.read(1 << 22):
                h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Documents → pieces of bounded size.


def cut_allowed(line: str) -> bool:
    """Whether a piece may start with ``line``: it starts with non-whitespace, or with one space and then not
    whitespace (GPT-2 pre-tokenizes "\\n The" as "\\n", " The" but "\\n  The" as "\\n ", " The")."""
    if not line or line[0] in "\n\r":
        return False
    return not line[0].isspace() or (line[0] == " " and len(line) > 1 and not line[1].isspace())


def _cut(text: str, piece_chars: int) -> Iterator[str]:
    """``text`` in pieces of about ``piece_chars`` characters, each cut before a line starting with non-whitespace."""
    start = 0
    while len(text) - start > piece_chars:
        at = piece_chars + start
        cut = -1
        while True:
            nl = text.find("\n", at)
            if nl < 0 or nl + 1 >= len(text):
                break
            if cut_allowed(text[nl + 1 : nl + 3]):
                cut = nl + 1
                break
            at = nl + 1
        if cut < 0:
            break
        yield text[start:cut]
        start = cut
    yield text[start:]


def _document(text: str, where: str, piece_chars: int) -> Iterator[Piece]:
    if not text.strip():
        return
    for i, piece in enumerate(_cut(text, piece_chars)):
        yield Piece(piece, i == 0, where)


class _Lines:
    """Accumulates the lines of one text document, flushing complete pieces as the document grows."""

    def __init__(self, name: str, piece_chars: int) -> None:
        self.name, self.piece_chars = name, piece_chars
        self.lines: list[str] = []
        self.chars = 0
        self.first = True
        self.start_line = 1
        self.has_text = False

    def add(self, line: str) -> Iterator[Piece]:
        if self.chars >= self.piece_chars and self.has_text and cut_allowed(line):
            yield Piece("".join(self.lines), self.first, f"{self.name}:{self.start_line}")
            self.first, self.lines, self.chars = False, [], 0
        self.lines.append(line)
        self.chars += len(line)
        self.has_text = self.has_text or bool(line.strip())

    def end(self, next_line: int) -> Iterator[Piece]:
        text = "".join(self.lines)
        if self.has_text and (text.strip() or not self.first):
            yield Piece(text, self.first, f"{self.name}:{self.start_line}")
        self.lines, self.chars, self.first, self.has_text, self.start_line = [], 0, True, False, next_line


def _text_pieces(path: Path, split: Split, piece_chars: int) -> Iterator[Piece]:
    doc = _Lines(str(path), piece_chars)
    number = 0
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                bare = line.rstrip("\n")
                if split == "wikitext" and HEADING.match(bare) and doc.has_text:
                    yield from doc.end(number)
                if split == "blank-lines" and not bare.strip():
                    yield from doc.end(number + 1)
                    continue
                yield from doc.add(line)
    except UnicodeDecodeError:
        raise UserError(f"{path}:{number + 1}: not UTF-8 text") from None
    yield from doc.end(number + 1)


# ----------------------------------------------------------------------------------------------------------
# Rows of jsonl, parquet and Hugging Face datasets.


class _BadRows:
    """Bad rows of one file: raised at once (``stop``) or counted and warned about once at the end (``skip``)."""

    def __init__(self, name: str, on_error: OnError, warn: Callable[[str], None]) -> None:
        self.name, self.on_error, self.warn = name, on_error, warn
        self.count, self.first = 0, ""

    def bad(self, where: str, why: str) -> None:
        if self.on_error == "stop":
            raise UserError(f"{where}: {why} (--on-error skip leaves such rows out)")
        self.count += 1
        at = where.removeprefix(self.name)
        self.first = self.first or f"{'line ' + at[1:] if at.startswith(':') else at.strip()}: {why}"

    def report(self) -> None:
        if self.count:
            self.warn(f"warning: {self.name}: skipped {self.count} row(s) (first: {self.first})")


def _row_text(row: Any, field: str, where: str, bad: _BadRows) -> str | None:
    if not isinstance(row, dict):
        bad.bad(where, f"not a JSON object but a {type(row).__name__}")
        return None
    if field not in row:
        bad.bad(where, f"no field {field!r} (fields: {', '.join(map(str, row)) or 'none'})")
        return None
    value = row[field]
    if not isinstance(value, str):
        bad.bad(where, f"field {field!r} is {'null' if value is None else 'a ' + type(value).__name__}, not a string")
        return None
    return value


def _open_jsonl(path: Path) -> io.TextIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise UserError(f"reading {path} needs the zstandard package: {EXTRA}") from None
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True),
                                encoding="utf-8")
    return open(path, encoding="utf-8")


def _jsonl_pieces(path: Path, field: str, bad: _BadRows, piece_chars: int) -> Iterator[Piece]:
    number = 0
    try:
        with _open_jsonl(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    bad.bad(where, f"not JSON ({e.msg} at column {e.colno})")
                    continue
                text = _row_text(row, field, where, bad)
                if text is not None:
                    yield from _document(text, where, piece_chars)
    except UnicodeDecodeError:
        raise UserError(f"{path}:{number + 1}: not UTF-8 text") from None
    except (OSError, EOFError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise
        raise UserError(f"{path}: corrupt compressed stream ({first_line(e)})") from None
    except Exception as e:  # zstandard.ZstdError has no common base with the others
        if type(e).__name__ != "ZstdError":
            raise
        raise UserError(f"{path}: corrupt .zst stream ({first_line(e)})") from None


def _column_pieces(batches: Iterator[Any], name: str, field: str, bad: _BadRows,
                   piece_chars: int) -> Iterator[Piece]:
    """Documents of the ``field`` column of pyarrow record batches."""
    row = 0
    for batch in batches:
        for value in batch.column(field).to_pylist():
            where = f"{name} row {row}"
            row += 1
            if not isinstance(value, str):
                bad.bad(where, f"{field} is {'null' if value is None else 'a ' + type(value).__name__}, not a string")
                continue
            yield from _document(value, where, piece_chars)


def _parquet_pieces(path: Path, field: str, bad: _BadRows, piece_chars: int) -> Iterator[Piece]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"reading {path} needs the pyarrow package: {EXTRA}") from None
    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow.lib.ArrowInvalid and friends
        raise UserError(f"{path}: not a readable parquet file ({first_line(e)})") from None
    columns = file.schema_arrow.names
    if field not in columns:
        raise UserError(f"{path}: no column {field!r} (columns: {', '.join(columns)}); choose one with --text-field")
    yield from _column_pieces(file.iter_batches(batch_size=1024, columns=[field]), str(path), field, bad, piece_chars)


def _hf_pieces(path: Path, field: str, hf_split: str, bad: _BadRows, piece_chars: int) -> Iterator[Piece]:
    try:
        import datasets
    except ImportError:
        raise UserError(f"reading the dataset {path} needs the datasets package: {EXTRA}") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many kinds for a damaged directory
        raise UserError(f"{path}: not a readable Hugging Face dataset ({first_line(e)})") from None
    if isinstance(ds, datasets.DatasetDict):
        if hf_split not in ds:
            raise UserError(f"{path} has splits {', '.join(ds)}; no {hf_split!r} (choose one with --hf-split)")
        ds = ds[hf_split]
    if field not in ds.column_names:
        raise UserError(f"{path}: no column {field!r} (columns: {', '.join(ds.column_names)}); choose one with "
                        f"--text-field")
    yield from _column_pieces(iter(ds.data.to_batches(max_chunksize=1024)), str(path), field, bad, piece_chars)


def iter_pieces(sources: Sequence[Source], *, text_field: str = "text", split: Split = "none",
                on_error: OnError = "stop", hf_split: str = "train", piece_chars: int = 1 << 20,
                warn: Callable[[str], None] = _warn) -> Iterator[Piece]:
    """Every document of ``sources``, in order, as pieces of at most about ``piece_chars`` characters; empty or
    blank documents are skipped. A bad row raises ``UserError`` naming file and line (``on_error="stop"``) or is
    left out with one warning per file (``"skip"``)."""
    for source in sources:
        bad = _BadRows(str(source.path), on_error, warn)
        if source.kind == "text":
            yield from _text_pieces(source.path, split, piece_chars)
        elif source.kind == "jsonl":
            yield from _jsonl_pieces(source.path, text_field, bad, piece_chars)
        elif source.kind == "parquet":
            yield from _parquet_pieces(source.path, text_field, bad, piece_chars)
        else:
            yield from _hf_pieces(source.path, text_field, hf_split, bad, piece_chars)
        bad.report()
