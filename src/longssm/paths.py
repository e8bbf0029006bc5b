"""Where files live: the shipped data, tokenizer and configs (package data, found with ``importlib.resources``), the
user's cache directory, and what a plain name is.

``builtin:<rel>`` names a file under the package's ``assets/`` folder (``builtin:wikitext-103/wiki.valid.tokens``),
so it resolves the same from a source checkout, an editable install or a wheel, from any working directory. A
config is named by a path or by the name of a config shipped in the package's ``configs/`` folder (``mamba_tiny``).
Caches (token-id memmaps, the evaluation cache of a checkpoint outside a run) go to ``user_cache_dir()``, never to
the working directory.

This module is a leaf: it imports only ``errors``, so that ``config`` and ``data`` can both use it.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .errors import UserError

BUILTIN_PREFIX = "builtin:"
CACHE_DIR_ENV = "LONGSSM_CACHE_DIR"
"""The environment variable that names longssm's cache directory (``user_cache_dir``)."""
MAX_NAME_BYTES = 255
"""The longest file name (in UTF-8 bytes) that common file systems take."""


def assets_root() -> Path:
    """The shipped data folder inside the installed package."""
    return Path(str(resources.files("longssm") / "assets"))


def shipped_configs() -> dict[str, Path]:
    """Config name -> path of every YAML config shipped with the package (``mamba_tiny``, ``quickstart``, the
    paper's experiments ``fig6_cpu``, ...), subfolders included. Names are file stems, unique across folders, so
    ``--config paper/fig6_cpu`` and ``--config fig6_cpu`` name the same file."""
    root = Path(str(resources.files("longssm") / "configs"))
    return {p.stem: p for p in sorted(root.rglob("*.yaml"))}


def resolve_config_file(name: str | Path) -> Path:
    """A config file named by ``name``: an existing file as given, else the shipped config of that name
    (``mamba_tiny``, ``mamba_tiny.yaml``, ``configs/mamba_tiny.yaml`` or ``paper/fig6_cpu``); ``UserError``
    listing the shipped configs otherwise."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    configs = shipped_configs()
    if stem in configs:
        return configs[stem]
    raise UserError(f"config file not found: {name} (shipped configs: {', '.join(sorted(configs))})")


def resolve_path(spec: str | Path) -> Path:
    """``builtin:<rel>`` -> the shipped file; anything else -> the path as given (``~`` expanded)."""
    spec = str(spec)
    if spec.startswith(BUILTIN_PREFIX):
        path = assets_root() / spec[len(BUILTIN_PREFIX):]
        if not path.exists():
            shipped = sorted(str(p.relative_to(assets_root())) for p in assets_root().rglob("*") if p.is_file())
            raise UserError(f"no shipped data file {spec!r} (shipped: {', '.join(shipped)})")
        return path
    return Path(spec).expanduser()


def user_cache_dir() -> Path:
    """longssm's cache directory: ``$LONGSSM_CACHE_DIR``, else ``$XDG_CACHE_HOME/longssm``, else
    ``~/.cache/longssm`` (read at every call; an empty variable counts as unset, and a relative ``XDG_CACHE_HOME``
    is ignored, as the XDG Base Directory specification says)."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "longssm"
    return Path.home() / ".cache" / "longssm"


def cache_path(cache_dir: str | Path | None) -> Path:
    """A configured cache directory (``data.cache_dir``; ``~`` expanded), or ``user_cache_dir()`` for None."""
    return user_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()


def is_plain_name(name: str) -> bool:
    """``name`` can be one file name inside a directory and nothing else: not empty, not ``.`` or ``..``, no ``/``
    or ``\\``, no NUL or other control character, at most ``MAX_NAME_BYTES`` bytes of UTF-8."""
    return (name not in ("", ".", "..") and not any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in name)
            and len(name.encode("utf-8", "surrogateescape")) <= MAX_NAME_BYTES)
