"""Output paths of every command: nothing overwrites what it did not write.

The output paths are ``eval --json`` (and the ``.md`` report beside it), ``eval --plots DIR``, ``plot --out`` (and
its ``.csv``), ``compare --out DIR``, ``lm-eval --output``, ``eval --cache-dir`` / ``compare --cache-dir``, and the
new directories of ``import --out``, ``export --out`` and ``calibrate --out``. They are checked before any work
starts (and the files again just before they are written), and these rules hold:

1. Refused always (exit 2, even with ``--force``): a path inside a checkpoint directory (one holding ``meta.json``)
   or inside a run's ``checkpoints/`` or ``final/``, a run's own files at its root (``config.yaml``,
   ``metrics.jsonl``, ``source.json``, ``tokenizer.json``, ``run.json`` of a directory that holds a run:
   ``checkpoint.holds_run``, where a lone ``config.yaml`` is a user's config, not a run), and the ledger below.
   Symbolic links are followed for this check, so a link cannot point an output into a run.
   One line names the path and why: ``--json runs/r/final/config.yaml is inside the checkpoint runs/r/final:
   choose a path outside it``.
2. An existing file is overwritten only when longssm wrote it: its directory's ledger ``.longssm-outputs.json``
   (``{"format": 1, "files": {name: sha256 at write time}}``) lists it with the sha256 it has now. A rerun of
   ``eval --json out.json`` overwrites its own output; a file the user wrote, or one of ours the user has since
   edited, is refused unless the command is given ``--force``. A symbolic link is never ours.
3. An output directory (``compare --out``, ``eval --plots``) may exist; each file written into it follows rule 2.
   A file where a directory is expected (or a directory where a file is expected) is refused.
4. A command that writes a new directory (``import``, ``export``, ``calibrate``) refuses any existing path, and
   one inside a checkpoint or a run's files (rule 1).

Writes are atomic (``files.atomic_file``; plots are drawn into a staging directory beside their destination and
renamed into place), every destination is checked before the first one is written, and each file written is
recorded in the ledger of its directory. Concurrent commands writing into one directory may each record only their
own files in the ledger (the last ledger written wins); a file left out is then treated as foreign.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .checkpoint import META, RUN_ENTRIES, holds_run
from .errors import UserError
from .files import TMP_PREFIX, atomic_file, fsync_dir, sha256_file, write_text_atomic

LEDGER = ".longssm-outputs.json"
"""The record, in each directory longssm writes output files into, of those files and their sha256."""
RUN_DIRS = ("checkpoints", "final")
"""Directories of a run whose whole content is the run's (rule 1)."""
RUN_FILES = ("config.yaml", "metrics.jsonl", "source.json", "tokenizer.json", "run.json")
"""Files at a run's root that are the run's own (rule 1)."""


def is_run_dir(directory: Path, besides: str | None = None) -> bool:
    """``directory`` holds a run (``checkpoint.holds_run``), and not only because of a ``config.yaml`` in it, nor
    only because of its entry ``besides`` (a directory named ``final`` or ``checkpoints`` is no evidence that its
    parent is a run: a user may name an output directory so)."""
    return holds_run(directory) is not None and any(
        (directory / name).exists() for name in RUN_ENTRIES if name not in ("config.yaml", besides))


def _why_protected(path: Path) -> str | None:
    """Why ``path`` (written as the user gave it, ``..`` folded) is a run's or a checkpoint's, or None."""
    for entry in (path, *path.parents):
        if (entry / META).is_file():
            return f"is {'the' if entry == path else 'inside the'} checkpoint {entry}"
        if entry.name in RUN_DIRS and is_run_dir(entry.parent, besides=entry.name):
            return f"is {'' if entry == path else 'inside '}{entry}, where the run {entry.parent} keeps its checkpoints"
    if path.name in RUN_FILES and is_run_dir(path.parent):
        return f"is the run {path.parent}'s own {path.name}"
    if path.name == LEDGER:
        return "is longssm's record of the files it wrote there"
    return None


def check_not_protected(path: str | Path, option: str) -> Path:
    """``path`` as a Path; ``UserError`` (rule 1, whatever ``--force`` says) when it is inside a checkpoint, a
    run's ``checkpoints/`` or ``final/``, a run's own file, or a ledger, as written or with its links resolved."""
    given = Path(path)
    for candidate in (Path(os.path.normpath(given)), given.resolve()):
        why = _why_protected(candidate)
        if why is not None:
            raise UserError(f"{option} {given} {why}: choose a path outside it")
    return given


def read_ledger(directory: Path) -> dict[str, str]:
    """The ledger of ``directory``: file name -> sha256 when longssm wrote it ({} when none or unreadable)."""
    try:
        files = json.loads((directory / LEDGER).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in files.items() if isinstance(v, str)} if isinstance(files, dict) else {}


def record(paths: list[Path]) -> None:
    """Add each file of ``paths``, with its sha256 now, to the ledger of its directory (written atomically);
    entries whose files are gone are dropped."""
    for directory in sorted({p.parent for p in paths}):
        ledger = {name: digest for name, digest in read_ledger(directory).items() if (directory / name).is_file()}
        ledger.update({p.name: sha256_file(p) for p in paths if p.parent == directory})
        write_text_atomic(directory / LEDGER, json.dumps({"format": 1, "files": dict(sorted(ledger.items()))},
                                                         indent=1) + "\n")


def foreign(path: Path) -> str | None:
    """Why the existing entry ``path`` is not longssm's own output (rule 2), or None when it is ours or absent."""
    if not os.path.lexists(path):
        return None
    if path.is_symlink():
        return "a symbolic link longssm did not write"
    digest = read_ledger(path.parent).get(path.name)
    if digest is None:
        return "a file longssm did not write"
    return None if sha256_file(path) == digest else "a file changed since longssm wrote it"


def _check_parents(path: Path, option: str) -> None:
    """``UserError`` when the nearest existing ancestor of ``path`` is not a directory (``a_file/out.json``)."""
    parent = next((p for p in path.parents if os.path.lexists(p)), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, not a directory")


def check_file(path: str | Path, option: str, force: bool = False) -> Path:
    """``path`` as a Path, checked as the destination of one output file: rule 1, not a directory, and (unless
    ``force``) not an existing file that longssm did not write (rule 2). ``UserError`` naming ``option``."""
    path = check_not_protected(path, option)
    if path.is_dir():
        raise UserError(f"{option} {path} is a directory; give a file name")
    _check_parents(path, option)
    why = foreign(path)
    if why is not None and not force:
        raise UserError(f"{option} would overwrite {path}, {why}: give --force to overwrite it, or choose "
                        f"another path")
    return path


def check_directory(path: str | Path, option: str, names: tuple[str, ...] = (), force: bool = False) -> Path:
    """``path`` as a Path, checked as an output directory (rule 3): rule 1, not a file, and each file of ``names``
    in it checked by ``check_file``."""
    path = check_not_protected(path, option)
    if os.path.lexists(path) and not path.is_dir():
        raise UserError(f"{option} {path} is a file; give a directory (several files are written into it)")
    _check_parents(path, option)
    for name in names:
        check_file(path / name, option, force)
    return path


def check_new_directory(path: str | Path, option: str) -> Path:
    """``path`` as a Path, checked as a new directory to be written (rule 4): rule 1, and nothing there yet."""
    path = check_not_protected(path, option)
    if os.path.lexists(path):
        raise UserError(f"{option} {path} exists; choose a new directory (nothing is overwritten)")
    _check_parents(path, option)
    return path


def write_texts(texts: dict[Path, str], option: str, force: bool = False) -> list[Path]:
    """Write each text of ``texts`` (destination -> content) atomically, after checking every destination
    (``check_file``), and record them in their ledgers. Returns the destinations."""
    for path in texts:
        check_file(path, option, force)
    for path, text in texts.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            f.write(text)
    record(list(texts))
    return list(texts)


@contextmanager
def staged_outputs(directory: str | Path, option: str, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory inside ``directory`` (created); when the block succeeds, every file it
    wrote there is checked as a destination in ``directory`` (``check_file``; all before any is moved), renamed
    into place and recorded in the ledger. The staging directory is removed in any case, and on an error nothing
    in ``directory`` has changed."""
    directory = check_directory(directory, option)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / f"{TMP_PREFIX}outputs-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    published = False
    try:
        yield staging
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        if any(p.parent != staging for p in files):
            raise AssertionError("staged outputs must be files directly in the staging directory")
        for staged in files:
            check_file(directory / staged.name, option, force)
        for staged in files:
            with open(staged, "rb") as f:
                os.fsync(f.fileno())
            os.replace(staged, directory / staged.name)
        fsync_dir(directory)
        record([directory / p.name for p in files])
        published = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not published:  # the directory this call made, left empty
            with contextlib.suppress(OSError):
                directory.rmdir()
