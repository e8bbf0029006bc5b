"""The exception types the command line turns into a one-line message and a non-zero exit."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any


class UserError(Exception):
    """Bad input from the user (a flag, a file, a config key): reported as one line, no traceback."""


UNKNOWN_KEY = "a known config key"
"""``ConfigError.expected`` of a key that the config does not have."""


class ConfigError(UserError):
    """A config value that does not fit its key, with the parts structured: ``key`` (dotted as in YAML:
    ``"train.lr"``; ``EvalConfig``'s keys are flat: ``"max_tokens"``), ``expected`` (what the key takes: ``"a
    number"``, ``">= 1"``, ``"one of zero, previous"``, or ``UNKNOWN_KEY``) and ``value`` (the value given).

    The message is one line naming the key: ``train.lr must be a number; got 'fast'``. The command line shows the
    same error with the key spelled as its flag (:meth:`render`), e.g. ``--max-tokens must be >= 1; got 0``.
    """

    def __init__(self, key: str, expected: str, value: Any, *, suggestion: str | None = None, every: bool = False,
                 got: str | None = None) -> None:
        self.key = key
        self.expected = expected
        self.value = value
        self.suggestion = suggestion
        """For an unknown key: the closest known key, if one is close."""
        self.every = every
        """The bound applies to every value of a list (``every value of passkey_depths must be in [0, 1]``)."""
        self.got = got
        """How the given value is shown, when not as ``repr(value)`` (``got 0.5 > 0.1``)."""
        super().__init__(self.render())

    @property
    def unknown(self) -> bool:
        return self.expected == UNKNOWN_KEY

    def render(self, name: Callable[[str], str] = str) -> str:
        """The message with each key shown as ``name(key)`` (the command line passes its key -> flag mapping).
        An unknown key is shown as it was typed (a YAML key, a ``--grid`` key), whatever ``name`` is."""
        if self.unknown:
            hint = f" (did you mean {self.suggestion}?)" if self.suggestion else ""
            return f"unknown config key {self.key!r}{hint}"
        got = self.got if self.got is not None else _shown(self.value)
        return f"{'every value of ' if self.every else ''}{name(self.key)} must be {self.expected}; got {got}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (library errors can span many lines)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class OperationFailed(OSError):
    """An ``OSError`` of one of our operations, with what it was doing (``doing``: "cannot write checkpoint
    runs/x/final") and the errno of the failure that stopped it, so the command line can show both:
    ``cannot write checkpoint runs/x/final: no space left on device``. ``errno`` is None when the failure had none."""

    def __init__(self, doing: str, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or first_line(cause))
        self.doing = doing

    def __str__(self) -> str:
        return os_error_line(self)[0]


# errno -> (the reason in plain words, the line that names the path, the exit code: 2 the user's mistake, 1 the
# machine's failure)
_OS_ERRORS: dict[int, tuple[str, str, int]] = {
    errno.ENOSPC: ("no space left on device", "no space left on device writing {path}", 1),
    errno.EDQUOT: ("disk quota exceeded", "disk quota exceeded writing {path}", 1),
    errno.EFBIG: ("file too large (file size limit)", "file too large writing {path} (file size limit)", 1),
    errno.EROFS: ("read-only file system", "read-only file system: {path}", 1),
    errno.EIO: ("input/output error (a failing disk or network file system?)", "input/output error on {path}", 1),
    errno.EMFILE: ("too many open files", "too many open files opening {path}", 1),
    errno.ENFILE: ("too many open files in the system", "too many open files in the system opening {path}", 1),
    errno.ENOMEM: ("out of memory", "out of memory on {path}", 1),
    errno.EACCES: ("permission denied", "permission denied: {path}", 2),
    errno.EPERM: ("operation not permitted", "operation not permitted: {path}", 2),
    errno.ENAMETOOLONG: ("file name too long", "file name too long: {path}", 2),
    errno.EEXIST: ("it already exists", "{path} already exists", 2),
    errno.ENOTEMPTY: ("the directory is not empty", "{path} is a directory that is not empty", 2),
    errno.ENOTDIR: ("a part of the path is not a directory", "{path}: a part of the path is not a directory", 2),
    errno.EISDIR: ("it is a directory", "{path} is a directory", 2),
    errno.ENOENT: ("no such file or directory", "no such file or directory: {path}", 2),
    errno.ELOOP: ("too many levels of symbolic links", "too many levels of symbolic links: {path}", 2),
}


def os_error_line(e: OSError) -> tuple[str, int]:
    """An ``OSError`` as one line in plain words that names its path, and the exit code: 2 for a user's mistake
    (permission denied, name too long, exists, not a directory, is a directory, not found), 1 for a failure of the
    machine (no space, file size limit, read-only file system, I/O error, others). Never the ``[Errno N]`` text.

    ``no space left on device writing runs/x/metrics.jsonl``; ``file name too long: runs/aaaa…``; an
    ``OperationFailed`` reads ``<doing>: <reason>`` (``cannot write checkpoint runs/x/final: no space left on
    device``)."""
    known = _OS_ERRORS.get(e.errno) if e.errno is not None else None
    reason = known[0] if known else _lowercase_first(e.strerror or first_line(e))
    code = known[2] if known else 1
    if isinstance(e, OperationFailed):
        return f"{e.doing}: {reason}", code
    path = e.filename2 if e.errno in (errno.EEXIST, errno.ENOTEMPTY) and e.filename2 else e.filename
    if path is None:
        return reason if e.errno is not None else first_line(e), code
    path = os.fsdecode(path) if isinstance(path, bytes | os.PathLike) else str(path)
    if e.errno == errno.ENOTDIR and (part := _file_on_the_way(path)) is not None:
        return f"{path}: a part of the path is not a directory ({part} is a file)", code
    if e.errno == errno.ENAMETOOLONG and (named := _too_long_name(path)) is not None:
        return f"file name too long: {named}", code
    if e.errno == errno.EEXIST and os.path.lexists(path):  # mkdir of a path that is a file, ...
        return f"{path} already exists ({'a directory' if os.path.isdir(path) else 'a file'})", code
    if known:
        return known[1].format(path=path), code
    return f"{reason}: {path}", code


NAME_MAX = 255
"""The longest file name (one path component, in bytes) of the usual file systems."""


def _too_long_name(path: str) -> str | None:
    """``path`` up to its first component longer than ``NAME_MAX`` bytes, that component shortened, and its
    length: ``runs/aaaaaaaaaaaaaaaaaaaaaaaa…aaaaaaaaaaaa.json (300 bytes; a name may have at most 255)``."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            short = part if len(part) <= 40 else f"{part[:24]}…{part[-12:]}"
            return f"{Path(*parts[:i], short)} ({size} bytes; a name may have at most {NAME_MAX})"
    return None


def _file_on_the_way(path: str) -> str | None:
    """The first part of ``path`` that exists and is not a directory (what makes a path under it ENOTDIR)."""
    parts = Path(path).parents
    for part in reversed(parts[:-1] if len(parts) > 1 else parts):
        if part.exists() and not part.is_dir():
            return str(part)
    return None


def _lowercase_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


class OutOfMemory(Exception):
    """An allocation that failed, as one line: what was being built, the config that sized it and the size
    (``out of memory building the mamba model (model.d_model=1000000, model.n_layers=2): tried to allocate 7450.6
    GiB``). The command line prints it with exit code 1."""


_ALLOCATION = (
    re.compile(r"you tried to allocate (?P<n>\d+) bytes"),  # torch's CPU allocator
    re.compile(r"tried to allocate (?P<n>[\d.]+) ?(?P<unit>bytes|B|KiB|MiB|GiB|TiB|PiB)\b", re.IGNORECASE),  # CUDA, MPS
    re.compile(r"unable to allocate (?P<n>[\d.]+) (?P<unit>bytes|B|KiB|MiB|GiB|TiB|PiB) for an array", re.IGNORECASE),
)
_UNITS = {"bytes": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50}


def allocation_failure(e: BaseException) -> str | None:
    """For an exception that is a failed allocation (torch's ``DefaultCPUAllocator: can't allocate memory``,
    ``torch.OutOfMemoryError``, numpy's or Python's ``MemoryError``): ``"tried to allocate 7450.6 GiB"`` (or
    ``"an allocation failed"`` when the size is not said); None for any other exception."""
    text = str(e)
    if not isinstance(e, MemoryError) and not (isinstance(e, RuntimeError) and (
            "can't allocate memory" in text or "out of memory" in text.lower())):
        return None
    for pattern in _ALLOCATION:
        found = pattern.search(text)
        if found:
            unit = (found.groupdict().get("unit") or "bytes").lower()
            return f"tried to allocate {float(found['n']) * _UNITS[unit] / 2**30:.1f} GiB"
    return "an allocation failed"
