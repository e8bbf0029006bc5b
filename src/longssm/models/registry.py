"""Model families by name: the built-in ones and those a user registers, all built by ``build_model`` alike.

A family is a block class (the protocol ``lm.RecurrentBlock``) and the norm class of its residual layers; the
language model around it is always ``lm.RecurrentLM``. ``model.family`` names a family in one of two ways:

    a registered name     "mamba", "mamba2", "mamba3", "s5", "gru", "lstm", "deltanet", "gated_deltanet", "gla",
                          "swa", or a name given to ``register_family``
    an import path        "package.module:BlockClass": the class is imported at build time (norm: RMSNorm), so
                          a user block can be named from YAML or the command line without Python code
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from torch import nn

from ..errors import UserError
from .delta_net import DeltaNetMixer, GatedDeltaNetMixer
from .gla import GLAMixer
from .layers import RMSNorm
from .lm import NormFactory
from .mamba import MambaMixer
from .mamba2 import Mamba2Mixer
from .mamba3 import Mamba3Mixer
from .rnn import GRUMixer, LSTMMixer
from .s5 import S5Mixer
from .swa import SWAMixer

__all__ = ["Family", "family_names", "get_family", "register_family"]


@dataclass(frozen=True)
class Family:
    """A registered family: ``block(config, layer_idx)`` is one layer's mixer, ``norm(d_model, eps)`` its norm."""

    name: str
    block: type[nn.Module]
    norm: NormFactory = RMSNorm


_FAMILIES: dict[str, Family] = {}
_BUILT_IN = ("mamba", "mamba2", "mamba3", "s5", "gru", "lstm", "deltanet", "gated_deltanet", "gla", "swa")


def register_family(name: str, block_cls: type[nn.Module], *, norm: NormFactory = RMSNorm) -> Family:
    """Register ``block_cls`` as family ``name``; then ``model.family: name`` builds
    ``RecurrentLM(config, block_cls, norm=norm)`` everywhere (training, evaluation, checkpoint loading).

    ``block_cls`` follows ``lm.RecurrentBlock``: ``__init__(config, layer_idx)``, ``state_shapes()`` and
    ``forward(x (b, l, d), state) -> (y (b, l, d), new_state)``. ``norm(d_model, eps)`` builds the pre-norm of
    every layer and the final norm (``RMSNorm``, ``torch.nn.LayerNorm``, ...). Registering a name again
    replaces the earlier registration (the built-in names are reserved). Returns the registered ``Family``.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"a family name is a non-empty string without ':' (that marks module:Class); got {name!r}")
    if name in _BUILT_IN and name in _FAMILIES:
        raise ValueError(f"{name!r} is a built-in family; register your block under another name")
    _check_block_class(block_cls, name)
    family = Family(name, block_cls, norm)
    _FAMILIES[name] = family
    return family


def family_names() -> tuple[str, ...]:
    """The registered family names: the built-in ones first, then the user's in registration order."""
    return tuple(_FAMILIES)


def get_family(name: str) -> Family:
    """The family ``model.family`` names: a registered name or a ``module:Class`` import path (``UserError``
    naming ``model.family`` otherwise)."""
    if name in _FAMILIES:
        return _FAMILIES[name]
    if ":" not in name:
        raise UserError(
            f"model.family must be one of {', '.join(_FAMILIES)} or module:BlockClass; got {name!r}"
        )
    module_name, _, class_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"model.family {name!r}: cannot import module {module_name!r} ({e})") from None
    block_cls = getattr(module, class_name, None)
    if block_cls is None:
        raise UserError(f"model.family {name!r}: module {module_name!r} has no attribute {class_name!r}")
    try:
        _check_block_class(block_cls, name)
    except TypeError as e:
        raise UserError(f"model.family {name!r}: {e}") from None
    return Family(name, block_cls)


def _check_block_class(block_cls: object, name: str) -> None:
    """A block is an ``nn.Module`` subclass with ``state_shapes`` (``TypeError`` otherwise)."""
    if not (isinstance(block_cls, type) and issubclass(block_cls, nn.Module) and hasattr(block_cls, "state_shapes")):
        raise TypeError(
            f"family {name!r}: the block must be an nn.Module subclass with __init__(config, layer_idx), "
            f"state_shapes() and forward(x, state); got {block_cls!r}"
        )


register_family("mamba", MambaMixer, norm=RMSNorm)
register_family("mamba2", Mamba2Mixer, norm=RMSNorm)
register_family("mamba3", Mamba3Mixer, norm=RMSNorm)
register_family("s5", S5Mixer, norm=nn.LayerNorm)
register_family("gru", GRUMixer, norm=nn.LayerNorm)
register_family("lstm", LSTMMixer, norm=nn.LayerNorm)
register_family("deltanet", DeltaNetMixer, norm=RMSNorm)
register_family("gated_deltanet", GatedDeltaNetMixer, norm=RMSNorm)
register_family("gla", GLAMixer, norm=RMSNorm)
register_family("swa", SWAMixer, norm=RMSNorm)
