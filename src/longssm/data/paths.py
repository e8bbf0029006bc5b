"""Where shipped data lives: ``builtin:<rel>`` names a file under the repository's ``data/`` folder."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

BUILTIN_PREFIX = "builtin:"


def data_root() -> Path:
    """The shipped data folder: ``$LONGSSM_DATA`` or ``<repo>/data`` (next to ``src/``)."""
    env = os.environ.get("LONGSSM_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "data"


def resolve_path(spec: str | Path) -> Path:
    spec = str(spec)
    if spec.startswith(BUILTIN_PREFIX):
        path = data_root() / spec[len(BUILTIN_PREFIX):]
        if not path.exists():
            raise UserError(f"shipped data file {spec!r} not found at {path} (set LONGSSM_DATA to the repo's data/ folder)")
        return path
    return Path(spec).expanduser()
