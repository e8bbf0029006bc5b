"""Writing files so that a crash never leaves a half-written one under its final name, and hashing files.

Every write that must not be seen half done (checkpoints, run directories, caches, token memmaps, configs) goes
through ``atomic_file`` or ``atomic_dir``: the content is written under a temporary name beside the final one,
flushed to disk (``os.fsync``), renamed into place (``os.replace``, atomic on POSIX within one file system), and the
directory that holds it is fsynced so that the rename itself survives a power loss. On any exception the temporary
entry is removed and whatever was at the final name before is untouched.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import UserError

TMP_PREFIX, OLD_PREFIX = ".tmp-", ".old-"
"""Names of a directory write in progress (``atomic_dir``) and of the directory it replaces."""


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename inside it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path) -> None:
    """The rename that makes a write visible, then the fsync of the directory that records it."""
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path`` (``mode`` "w" or "wb"), yield it, then fsync it and rename it onto
    ``path``. The parent directory must exist."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """``Path(path).write_text(text)`` through ``atomic_file``."""
    with atomic_file(path) as f:
        f.write(text)


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory (``root`` included), so the entries are on disk too."""
    entries = sorted(root.rglob("*"))
    for file in (p for p in entries if p.is_file()):
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    for folder in [*(p for p in entries if p.is_dir()), root]:
        fsync_dir(folder)


def _remove(path: Path) -> None:
    """Delete a file or a directory tree; errors ignored (it is already out of the way under a ``.old-`` name)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a new directory ``.tmp-<name>-<pid>`` beside ``path``; when the block succeeds, fsync every file and
    directory in it and rename it to ``path``. An existing ``path`` is a ``UserError`` (nothing is overwritten)
    unless ``replace``: then the old entry is renamed aside (``.old-<name>-<pid>``), the new one renamed in, the
    old one deleted. On any exception the temporary directory is deleted and ``path`` is as it was."""
    path = Path(path)
    if path.exists() and not replace:
        raise UserError(f"{path} exists; choose a new output directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        old = path.parent / f"{OLD_PREFIX}{path.name}-{os.getpid()}" if path.exists() else None
        if old is not None:
            os.replace(path, old)
        try:
            _publish(tmp, path)
        except BaseException:
            if old is not None:  # put the old directory back under its name
                os.replace(old, path)
            raise
        if old is not None:
            _remove(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes (hex digest), streamed in pieces of ``chunk`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(chunk), b""):
            h.update(piece)
    return h.hexdigest()
