"""Model families behind one stateful interface (see ``base.py``), selected by ``model.family``."""

from __future__ import annotations

import importlib

from torch import nn

from ..config import ModelConfig
from ..errors import UserError
from .base import State, StatefulLM

# family -> (module, class name); modules are imported on demand.
REGISTRY: dict[str, tuple[str, str]] = {
    "mamba": ("mamba", "MambaLM"),
    "mamba2": ("mamba2", "Mamba2LM"),
    "s5": ("s5", "S5LM"),
    "gru": ("rnn", "GRULM"),
    "lstm": ("rnn", "LSTMLM"),
}


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the language model of ``config.family`` (``config.vocab_size`` must be set)."""
    if config.vocab_size is None:
        raise UserError("model.vocab_size is not set (it is normally taken from the tokenizer)")
    if config.family not in REGISTRY:
        raise UserError(f"model.family must be one of {', '.join(REGISTRY)}; got {config.family!r}")
    module_name, class_name = REGISTRY[config.family]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)(config)


__all__ = ["REGISTRY", "State", "StatefulLM", "build_model"]
