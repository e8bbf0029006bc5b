"""longssm: train recurrent language models on short windows, run them on unbounded context."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "register_family"]


def __getattr__(name: str) -> Any:
    """``longssm.register_family`` is imported on first use: ``import longssm`` (the CLI) stays free of torch."""
    if name == "register_family":
        from .models.registry import register_family

        return register_family
    raise AttributeError(f"module 'longssm' has no attribute {name!r}")
