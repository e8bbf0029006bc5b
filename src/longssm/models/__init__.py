"""Recurrent language models: one shell (``lm.RecurrentLM``) around the block of the family ``model.family`` names.

    lm.py           RecurrentLM (embedding -> pre-norm residual blocks -> final norm -> tied head), the block
                    protocol RecurrentBlock, resolve_scan
    layers.py       RMSNorm, CausalDepthwiseConv1d (shared by the families)
    mamba.py, mamba2.py, s5.py, rnn.py       the built-in blocks
    registry.py     family names -> blocks (built-in, register_family, module:Class)
    hf_adapters.py  Hugging Face / mamba_ssm state-dict adapters
    base.py         the stateful interface and family-agnostic state helpers
"""

from __future__ import annotations

from ..config import ModelConfig
from .base import State, StatefulLM
from .lm import RecurrentLM
from .registry import get_family


def build_model(config: ModelConfig, *, tie_embeddings: bool | None = None) -> RecurrentLM:
    """The language model of ``config.family`` (``config.vocab_size`` must be set); see ``RecurrentLM``.
    ``tie_embeddings``: None = ``config.tie_embeddings``."""
    family = get_family(config.family)
    tie = config.tie_embeddings if tie_embeddings is None else tie_embeddings
    return RecurrentLM(config, family.block, norm=family.norm, tie_embeddings=tie)


__all__ = ["RecurrentLM", "State", "StatefulLM", "build_model"]
