"""The implementations that the benchmarks compare, behind one interface.

``build(impl, vocab, dims)`` returns ``(model, forward)`` with ``forward(tokens (b, l), state) -> (logits, state)``;
``dims`` = d_model, n_layers, d_state, expand, d_conv of a Mamba-1 model, float32, head tied to the embedding:

    longssm       ``longssm.models.build_model`` (family mamba): carries its recurrent state across calls
    mambapy       mambapy's LM layout (embedding -> ``mambapy.mamba.Mamba`` -> RMSNorm -> head), parallel scan
                  ``pscan``; the head is tied here (mambapy unties it by default)
    transformers  ``MambaForCausalLM`` built from a local config, without ``mamba_ssm``: its sequential CPU path
    floor         the model with its body removed (embedding -> RMSNorm -> tied head): the vocabulary
                  projection that every implementation pays

The peers take no state: they ignore it and return None, so every call starts from zeros. ``pscan_scan`` is
mambapy's parallel scan with the discretisation around it, for the scan benchmark.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the HF model is built from a local config; never download
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

Forward = Callable[[Tensor, Any], tuple[Tensor, Any]]
VOCABS = {"byte": 256, "gpt2": 50257}
"""Vocabulary sizes the benchmarks run: bytes and GPT-2's BPE."""
PEER_MODULES = {"mambapy": "mambapy", "transformers": "transformers"}
"""Peer -> the package it needs."""


def missing(impl: str) -> str | None:
    """Why ``impl`` cannot run here (its package is not installed), or None when it can."""
    module = PEER_MODULES.get(impl)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return f"{impl} missing (no module named {module!r})"


def notes(impls: list[str]) -> list[str]:
    """What a reader of the figures of ``impls`` must know about this installation: missing peers, rebuilds."""
    found = [reason for impl in impls if (reason := missing(impl))]
    if "mambapy" in impls and not missing("mambapy") and _mambapy_lm()[1]:
        found.append(_mambapy_lm()[1])
    return found


def build(impl: str, vocab: int, dims: dict[str, int]) -> tuple[nn.Module, Forward]:
    """(model, forward) of ``impl`` with a ``vocab``-token vocabulary; ImportError when a peer is not installed."""
    return BUILDERS[impl](vocab, dims)


def n_params(model: nn.Module) -> int:
    """Parameters, a tied weight counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _stateless(model: nn.Module) -> Forward:
    """forward(tokens, state) -> (model(tokens), None): the state is ignored, every call starts from zeros."""

    def forward(tokens: Tensor, state: Any) -> tuple[Tensor, None]:
        return model(tokens), None

    return forward


def build_longssm(vocab: int, dims: dict[str, int], family: str = "mamba") -> tuple[nn.Module, Forward]:
    """longssm's model of ``family`` with the sizes ``dims`` (the Mamba-1 keys; every family reads those it has:
    Mamba-2 d_state and expand, the linear-attention families and SWA d_model / head_dim heads of 32, SWA a window
    of 64). ``a+b``: a hybrid whose layers alternate a, b (``model.layers``)."""
    from longssm.config import ModelConfig
    from longssm.models import build_model

    layers = family.split("+") if "+" in family else None
    model = build_model(ModelConfig(family=layers[0] if layers else family, layers=layers, vocab_size=vocab, **dims))
    return model, model


class MambapyLM(nn.Module):
    """mambapy's ``lm.LM`` layout (embedding -> ``mambapy.mamba.Mamba`` -> RMSNorm -> head), for installs where
    ``mambapy.lm`` cannot be imported (it imports ``mambapy.mamba2``, which needs ``einops`` and ``mamba_ssm``)."""

    def __init__(self, config: Any, vocab_size: int) -> None:
        super().__init__()
        from mambapy.mamba import Mamba, RMSNorm

        self.embedding = nn.Embedding(vocab_size, config.d_model)
        self.mamba = Mamba(config)
        self.norm_f = RMSNorm(config.d_model, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.d_model, vocab_size, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.lm_head(self.norm_f(self.mamba(self.embedding(tokens))))


@functools.cache
def _mambapy_lm() -> tuple[type[nn.Module], str | None]:
    """mambapy's ``lm.LM`` and None, or ``MambapyLM`` and why ``lm.LM`` could not be imported."""
    try:
        from mambapy.lm import LM
    except ImportError as exc:
        return MambapyLM, f"mambapy.lm not importable ({exc}): its LM layout rebuilt around mambapy.mamba.Mamba"
    return LM, None


def build_mambapy(vocab: int, dims: dict[str, int]) -> tuple[nn.Module, Forward]:
    from mambapy.mamba import MambaConfig

    config = MambaConfig(d_model=dims["d_model"], n_layers=dims["n_layers"], d_state=dims["d_state"],
                         expand_factor=dims["expand"], d_conv=dims["d_conv"], pscan=True)
    model = _mambapy_lm()[0](config, vocab_size=vocab)
    model.lm_head.weight = model.embedding.weight
    return model, _stateless(model)


def build_transformers(vocab: int, dims: dict[str, int]) -> tuple[nn.Module, Forward]:
    from transformers import MambaConfig, MambaForCausalLM

    config = MambaConfig(
        vocab_size=vocab, hidden_size=dims["d_model"], num_hidden_layers=dims["n_layers"],
        state_size=dims["d_state"], expand=dims["expand"], conv_kernel=dims["d_conv"],
        use_cache=False, use_mambapy=False, tie_word_embeddings=True,
    )
    model = MambaForCausalLM(config)

    def forward(tokens: Tensor, state: Any) -> tuple[Tensor, None]:
        return model(input_ids=tokens, use_cache=False).logits, None

    return model, forward


class Floor(nn.Module):
    """The model with its body removed: tokens (b, l) -> embedding -> RMSNorm -> tied head -> logits (b, l, V)."""

    def __init__(self, vocab: int, d_model: int) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab, d_model)
        self.norm_f = nn.RMSNorm(d_model, eps=1e-5)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        self.lm_head.weight = self.embeddings.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.lm_head(self.norm_f(self.embeddings(tokens)))


def build_floor(vocab: int, dims: dict[str, int]) -> tuple[nn.Module, Forward]:
    model = Floor(vocab, dims["d_model"])
    return model, _stateless(model)


BUILDERS = {"longssm": build_longssm, "mambapy": build_mambapy, "transformers": build_transformers,
            "floor": build_floor}


def pscan_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """mambapy's ``pscan`` with the discretisation and output contraction of ``mambapy.mamba.MambaBlock``:
    u, delta (b, l, e); A (e, n); B, C (b, l, n) -> y (b, l, e)."""
    from mambapy.pscan import pscan

    deltaA = torch.exp(delta.unsqueeze(-1) * A)  # (b, l, e, n)
    BX = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # (b, l, e, n)
    hs = pscan(deltaA, BX)
    return (hs @ C.unsqueeze(-1)).squeeze(-1)
