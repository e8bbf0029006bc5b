"""The one language-model shell every family runs in, and the block protocol a family implements.

    tokens (b, l) ─ embeddings ─> x (b, l, d) ─ n_layers × [x ← x + block(norm(x), state_i)
                                                            (x ← x + mlp(mlp_norm(x)) when model.mlp_expand > 0)]
                  ─ norm_f ─ lm_head ─> logits (b, l, V)

Glossary
    b  batch        l  sequence length        d  d_model        V  vocab_size        i  layer index

A family supplies only its block (the sequence mixer of one layer, see ``RecurrentBlock``) and the class of its
pre-norm (RMSNorm for Mamba-1/2, LayerNorm for S5, GRU, LSTM); ``RecurrentLM`` owns everything else: the
embedding, the residual stream, the final norm, the tied head, the loop over layers, the zero state and the
loading rules of the tied head. Parameter names are those of Hugging Face ``MambaForCausalLM`` /
``Mamba2ForCausalLM`` for every family:

    backbone.embeddings.weight            (V, d)
    backbone.layers.{i}.norm.*            the pre-norm of layer i
    backbone.layers.{i}.mixer.*           the family's block of layer i
    backbone.layers.{i}.mlp_norm.*,       the norm and the SwiGLU MLP (``layers.SwiGLU``) after the mixer, only
    backbone.layers.{i}.mlp.*             when model.mlp_expand > 0 (the Transformer-style block of fla's models)
    backbone.norm_f.*                     the final norm
    lm_head.weight                        (V, d), the same tensor as backbone.embeddings.weight (tied)

State (see ``base.py``): block i's parts ``{"conv": ..., "ssm": ...}`` are carried as ``"layers.{i}.conv"``,
``"layers.{i}.ssm"``; feeding a sequence in pieces with the carried state gives the logits and the state of
one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import UserError
from .base import State
from .layers import RMSNorm, SwiGLU, full_precision

NormFactory = Callable[[int, float], nn.Module]
"""``norm(d_model, eps) -> module`` mapping (..., d) to (..., d): ``RMSNorm``, ``nn.LayerNorm``, ..."""

EMBEDDING, HEAD = "backbone.embeddings.weight", "lm_head.weight"


class RecurrentBlock(Protocol):
    """What a family implements: the sequence mixer of one layer, an ``nn.Module`` built as ``block(config, i)``.

    ``state_shapes()`` names the parts of the layer's recurrent state and their shapes without the batch
    dimension, e.g. ``{"conv": (e, k - 1), "ssm": (e, n)}``; every part is real floating point (store a
    complex state with ``torch.view_as_real``). ``forward`` maps the normed residual stream and the state
    before the first token to the block's output and the state after the last token, with the same keys
    and shapes; the returned tensors must be contiguous (safetensors saves them as they are).

    Implementations (``model.scan``, see ``ops/dispatch.py``): a block that has a GPU kernel besides its chunked
    and reference code names it in the class attribute ``fast_kernels`` (Mamba-1 ``("triton",)``, Mamba-2
    ``("mamba_ssm",)``; absent = none). ``build_model`` (and ``set_scan`` after a move) stores the implementation
    chosen for the model's device as ``self.scan_impl`` (``chunked``, ``reference`` or one of ``fast_kernels``)
    on every block, declared or not; ``forward`` runs what it names and never chooses. A block with a single
    implementation ignores it.
    """

    def __init__(self, config: ModelConfig, layer_idx: int) -> None: ...

    def state_shapes(self) -> dict[str, tuple[int, ...]]: ...

    def forward(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x (b, l, d), state {part: (b, *shape)} -> y (b, l, d), new state {part: (b, *shape)}."""
        ...


class ResidualBlock(nn.Module):
    """Pre-norm residual layer: x ← x + mixer(norm(x), state), then, with an MLP, x ← x + mlp(mlp_norm(x)).
    (b, l, d) -> (b, l, d). The MLP is stateless: the layer's state is its mixer's.

    The residual stream stays in the stream's dtype (the official Mamba code keeps it in float32 with
    ``residual_in_fp32``; for float32 models the two agree, and float64 stays float64 for the exactness tests).
    """

    def __init__(self, norm: nn.Module, mixer: nn.Module, mlp: tuple[nn.Module, nn.Module] | None = None) -> None:
        super().__init__()
        self.norm = norm
        self.mixer = mixer
        self.mlp_norm, self.mlp = (None, None) if mlp is None else mlp

    def forward(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x (b, l, d), the layer's state {part: (b, ...)} -> x (b, l, d), the new layer state."""
        y, new_state = self.mixer(self.norm(x), state)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, new_state


class Backbone(nn.Module):
    """Embedding, the residual layers and the final norm (HF ``MambaModel``); named ``backbone`` in the LM."""

    def __init__(self, config: ModelConfig, block: type[nn.Module], norm: NormFactory,
                 pattern: Sequence[tuple[type[nn.Module], NormFactory]] | None = None) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.d_model)
        hidden = round(config.mlp_expand * config.d_model)
        pattern = list(pattern) if pattern else [(block, norm)]

        def layer(i: int) -> ResidualBlock:  # built in this order: pre-norm, mixer, MLP (the initialisation's RNG)
            layer_block, layer_norm = pattern[i % len(pattern)]
            pre_norm, mixer = layer_norm(config.d_model, config.norm_eps), layer_block(config, i)
            mlp = (layer_norm(config.d_model, config.norm_eps), SwiGLU(config.d_model, hidden)) if hidden else None
            return ResidualBlock(pre_norm, mixer, mlp)

        self.layers = nn.ModuleList(layer(i) for i in range(config.n_layers))
        self.norm_f = norm(config.d_model, config.norm_eps)


class RecurrentLM(nn.Module):
    """A recurrent language model: ``forward(tokens (b, l), state) -> (logits (b, l, V), state)``.

    Args:
        config: the model config; ``config.vocab_size`` must be set.
        block: the family's block class (see ``RecurrentBlock``), instantiated as ``block(config, i)``.
        norm: the pre-norm and final norm, ``norm(d_model, eps)``.
        tie_embeddings: ``lm_head.weight`` *is* ``backbone.embeddings.weight`` (default, as in the official
            Mamba LMs); False gives the head its own matrix (HF ``Mamba2Config``'s default).
        pattern: a hybrid (``model.layers``): (block class, norm) of the layers, repeated to ``n_layers``; layer i
            is ``pattern[i % len(pattern)]``, the final norm is ``norm``. None: every layer is ``block``, ``norm``.

    Weights: the embedding is N(0, 0.02) (the official Mamba init, used for every family); norms start at 1;
    blocks initialise their own parameters.

    Build it with ``longssm.models.build_model``, which also chooses each block's ``scan_impl``; a model built
    here directly needs ``longssm.models.set_scan`` before its first forward pass.
    """

    def __init__(
        self, config: ModelConfig, block: type[nn.Module], *, norm: NormFactory = RMSNorm, tie_embeddings: bool = True,
        pattern: Sequence[tuple[type[nn.Module], NormFactory]] | None = None,
    ) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise UserError("model.vocab_size is not set (it is normally taken from the tokenizer)")
        self.config = config
        self.tie_embeddings = tie_embeddings
        self.backbone = Backbone(config, block, norm, pattern)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        nn.init.normal_(self.backbone.embeddings.weight, std=0.02)
        if tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Zeros: ``{"layers.{i}.{part}": (batch_size, *shape)}`` for every layer i and part of its block's
        ``state_shapes()``, on ``device`` in ``dtype`` (default: those of the parameters)."""
        weight = self.backbone.embeddings.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        return {
            f"layers.{i}.{part}": torch.zeros(batch_size, *shape, device=device, dtype=dtype)
            for i, layer in enumerate(self.backbone.layers)
            for part, shape in layer.mixer.state_shapes().items()
        }

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """tokens (b, l) int64, state (see ``initial_state``; None = zeros) -> logits (b, l, V), the state after
        the last token. Under half-precision autocast the logits are half precision but every returned state
        tensor is at least float32 (``full_precision``): carried states are never rounded at window boundaries."""
        if state is None:
            state = self.initial_state(tokens.shape[0], device=tokens.device)
        x = self.backbone.embeddings(tokens)  # (b, l, d)
        new_state: State = {}
        for i, layer in enumerate(self.backbone.layers):
            prefix = f"layers.{i}."
            x, layer_state = layer(x, {part: state[prefix + part] for part in layer.mixer.state_shapes()})
            new_state.update({prefix + part: full_precision(value) for part, value in layer_state.items()})
        return self.lm_head(self.backbone.norm_f(x)), new_state

    def load_state_dict(
        self, state_dict: Mapping[str, Tensor], strict: bool = True, assign: bool = False
    ) -> nn.modules.module._IncompatibleKeys:
        """``nn.Module.load_state_dict`` with the rules of the tied head (a tied model only; see ``tie_head``)."""
        if self.tie_embeddings:
            state_dict = tie_head(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def tie_head(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict for a tied model: a missing ``lm_head.weight`` (``save_pretrained`` omits it) is the embedding;
    an ``lm_head.weight`` that differs from the embedding is refused (``UserError``), never overwritten."""
    out = with_head(state_dict)
    if EMBEDDING in out and (out[HEAD].shape != out[EMBEDDING].shape or not torch.equal(out[HEAD], out[EMBEDDING])):
        raise UserError(
            f"untied lm_head.weight: it differs from {EMBEDDING}, but this model ties the two; "
            "build it with tie_embeddings=False to load separate matrices"
        )
    return out


def with_head(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state_dict`` where a missing ``lm_head.weight`` is the embedding matrix (tied)."""
    out = dict(state_dict)
    if HEAD not in out and EMBEDDING in out:
        out[HEAD] = out[EMBEDDING]
    return out
