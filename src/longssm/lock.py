"""One writer per directory: an advisory lock held for as long as a process writes there.

The lock is ``fcntl.flock`` on the directory itself (its open file descriptor), so it needs no lock file to be
created or deleted, and the kernel releases it when the process ends in any way (exit, crash, ``kill -9``): a
stale lock of a dead process is never an obstacle. Beside it, the holder writes ``.longssm-lock.json`` (its pid,
host, command line and start time) so that a second process can say who holds the directory; that file is only
information, removed when the lock is released, and a leftover one of a dead process is ignored.

The lock is advisory: it keeps longssm processes apart, not other programs. ``flock`` works on local file systems;
on NFS it depends on the server (Linux emulates it with POSIX locks there).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

HOLDER_FILE = ".longssm-lock.json"
"""Who holds the lock of a directory (information only; the lock is the ``flock`` of the directory)."""


class DirectoryBusy(UserError):
    """Another live process holds the directory's lock."""


def holder(path: Path) -> str:
    """Who holds ``path``'s lock, in words, from its holder file: "process 1234 (`longssm train ...`, since
    14:03:05)"; "another process" when the file is missing, unreadable or names a process that no longer runs."""
    try:
        info = json.loads((path / HOLDER_FILE).read_text())
        pid, host = int(info["pid"]), str(info.get("host", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
    if host == socket.gethostname() and not _alive(pid):
        return "another process"
    where = "" if host == socket.gethostname() else f" on {host}"
    return f"process {pid}{where} (`{info.get('command', '?')}`, since {info.get('since', '?')})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _make_dirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; returns the ones this call created, deepest first."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_created(created: list[Path]) -> None:
    """Remove the directories ``_make_dirs`` created, if they are still empty."""
    for p in created:
        try:
            p.rmdir()
        except OSError:
            return


@contextmanager
def locked_dir(path: str | Path, what: str = "directory", wait: bool = False) -> Iterator[Path]:
    """Hold the lock of directory ``path`` (created with its parents if missing) for the block.

    ``DirectoryBusy`` (a ``UserError``: one line, exit 2) when another live process holds it, naming that process.
    When the block raises, directories this call created are removed again if they are still empty, so a run that
    fails its checks leaves no trace. ``what`` names the directory in the message (e.g. "--run-dir"). ``wait``:
    block until the lock is free instead (processes sharing a cache entry).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a directory")
    created = _make_dirs(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise DirectoryBusy(f"{what} {path} is in use by {holder(path)}: one process writes it at a time; "
                                f"wait for it to end or stop it (a lock of a process that died is released by "
                                f"itself)") from None
        _write_holder(path)
        try:
            yield path
        except BaseException:
            (path / HOLDER_FILE).unlink(missing_ok=True)
            _remove_created(created)
            raise
        (path / HOLDER_FILE).unlink(missing_ok=True)
    finally:
        os.close(fd)  # releases the flock


def _write_holder(path: Path) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["longssm", *sys.argv[1:]])[:300],
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    with contextlib.suppress(OSError):  # the lock holds without it; a second process's message is less precise
        (path / HOLDER_FILE).write_text(json.dumps(info))
