"""Recurrent language models: one shell (``lm.RecurrentLM``) around the block of the family ``model.family`` names.

    lm.py           RecurrentLM (embedding -> pre-norm residual blocks -> final norm -> tied head), the block
                    protocol RecurrentBlock
    layers.py       RMSNorm, CausalDepthwiseConv1d, the length-scale buffers, full_precision (shared by families)
    mamba.py, mamba2.py, s5.py, rnn.py, delta_net.py, gla.py       the built-in blocks
    linear_attention.py                      what the delta-rule and GLA mixers share
    registry.py     family names -> blocks (built-in, register_family, module:Class)
    hf_adapters.py  Hugging Face / mamba_ssm state-dict adapters
    base.py         the state type and family-agnostic state helpers

Which implementation of each block runs (``model.scan``) is chosen by ``ops.dispatch`` when the model is built
(``build_model``) and again by ``set_scan``; model files hold the architecture only.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..errors import OutOfMemory, allocation_failure
from ..ops.dispatch import resolve_scan
from .base import State
from .lm import RecurrentLM
from .registry import get_family


def build_model(
    config: ModelConfig, *, device: torch.device | str | None = None, tie_embeddings: bool | None = None
) -> RecurrentLM:
    """The language model of ``config.family`` (``config.vocab_size`` must be set; see ``RecurrentLM``) on
    ``device``, with the implementation of every block chosen for that device (``set_scan``).

    The weights are initialised where torch creates tensors (the CPU unless a device context says otherwise) and
    then moved to ``device`` (None: left there), so a seed gives the same weights on every device.
    ``tie_embeddings``: None = ``config.tie_embeddings``. With ``config.layers`` (a hybrid) layer i is the family
    ``layers[i % len(layers)]``, each name resolved like ``model.family``."""
    family = get_family(config.family)
    pattern = None if config.layers is None else [(f.block, f.norm) for f in map(get_family, config.layers)]
    tie = config.tie_embeddings if tie_embeddings is None else tie_embeddings
    try:
        model = RecurrentLM(config, family.block, norm=family.norm, tie_embeddings=tie, pattern=pattern)
        if device is not None:
            model = model.to(device)
    except (RuntimeError, MemoryError) as e:
        tried = allocation_failure(e)
        if tried is None:
            raise
        keys = SIZE_KEYS.get(config.family, SIZE_KEYS["mamba"])
        sizes = ", ".join(f"model.{key}={getattr(config, key)}" for key in keys if getattr(config, key) is not None)
        where = "" if device is None else f" on {device}"
        raise OutOfMemory(f"out of memory building the {config.family} model{where} ({sizes}): {tried}") from None
    return set_scan(model)


SIZE_KEYS = {"mamba": ("d_model", "n_layers", "d_state", "expand", "vocab_size"),
             "mamba2": ("d_model", "n_layers", "d_state", "expand", "head_dim", "vocab_size"),
             "s5": ("d_model", "n_layers", "d_state", "vocab_size"),
             "gru": ("d_model", "n_layers", "vocab_size"), "lstm": ("d_model", "n_layers", "vocab_size"),
             **{family: ("d_model", "n_layers", "n_heads", "head_dim", "v_head_dim", "vocab_size")
                for family in ("deltanet", "gated_deltanet", "gla")},
             "swa": ("d_model", "n_layers", "n_heads", "head_dim", "window", "vocab_size")}
"""The ``ModelConfig`` keys that size each built-in family, named by an out-of-memory error of ``build_model``
(another family: those of mamba)."""


def set_scan(model: RecurrentLM, scan: str | None = None) -> RecurrentLM:
    """Choose again which implementation every block of ``model`` runs, for the device and dtype its weights have
    now: call it after moving the model (``model.to(...)``), or to run another ``model.scan`` (``scan``, stored in
    ``model.config.scan``; None keeps the config's). Each block gets ``scan_impl`` from ``ops.dispatch.resolve_scan``
    with the kernels its class declares in ``fast_kernels`` (none when it declares nothing); a scan that cannot run
    here is a ``UserError`` and leaves the model as it was. Returns ``model``."""
    scan = model.config.scan if scan is None else scan
    weight = model.backbone.embeddings.weight
    mixers = [layer.mixer for layer in model.backbone.layers]
    impls = [resolve_scan(scan, weight.device, getattr(mixer, "fast_kernels", ()), weight.dtype) for mixer in mixers]
    model.config.scan = scan
    for mixer, impl in zip(mixers, impls):
        mixer.scan_impl = impl
    return model


__all__ = ["RecurrentLM", "State", "build_model", "set_scan"]
