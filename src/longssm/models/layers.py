"""Layers shared by several families: RMSNorm, the per-head (gated) RMSNorm and the L2 normalisation of the
linear-attention mixers, the stateful causal depthwise convolution, the SwiGLU MLP sublayer, the calibrated
length-scale buffers of the Mamba mixers and the float32 promotion of carried states.

Glossary
    b  batch        l  sequence length        c  channels        k  kernel width (d_conv)
    d  d_model      f  hidden width of the MLP (round(mlp_expand * d))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig


def register_length_scales(mixer: nn.Module, config: ModelConfig, layer_idx: int) -> None:
    """Give a Mamba mixer its calibrated multipliers of Δ and A (``model.delta_scale``, ``model.a_scale`` of layer
    ``layer_idx``; 1 when unset) as 0-dim buffers ``delta_scale`` and ``a_scale``.

    They are non-persistent: they live in the config, not in the weights file (so HF export and strict loading see
    the same tensors as before), and ``calibrate.py`` replaces them by tensors with gradients through
    ``torch.func.functional_call``. Multiplying by 1 is exact, so an uncalibrated model is unchanged bit for bit.
    """
    for name in ("delta_scale", "a_scale"):
        scales = getattr(config, name)
        mixer.register_buffer(name, torch.tensor(1.0 if scales is None else scales[layer_idx]), persistent=False)


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 when it is bfloat16 or float16 (the dtype autocast gives a mixer's outputs); else ``t``."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class RMSNorm(nn.Module):
    """y = weight ⊙ x / sqrt(mean(x²) + eps) over the last dimension: (..., d) -> (..., d).

    Computed in the input's dtype promoted to at least float32: half precision is normalised in float32, and
    float64 stays float64 (HF always casts to float32, which would keep the float64 exactness tests at ~1e-7).
    """

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., d) -> (..., d) in x's dtype."""
        v = x.to(torch.promote_types(x.dtype, torch.float32))
        v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * v.to(x.dtype)


class CausalDepthwiseConv1d(nn.Conv1d):
    """Causal depthwise convolution over time that continues from a carried state (Mamba-1 and Mamba-2).

    Parameters are those of ``nn.Conv1d(c, c, k, groups=c)`` (``weight`` (c, 1, k), ``bias`` (c,)), so the names
    and the initialisation match the official code and HF; only ``forward`` differs:

        y_t = bias + Σ_{j<k} w_j ⊙ xc_{t+j},     xc = [state (the previous k-1 inputs, oldest first), x]

    written as k shifted multiply-adds instead of a padded conv1d: exact in any dtype, cheaper on CPU than
    conv1d's backward, and torch's float64 depthwise conv1d is a slow per-channel loop. Works for any l,
    also l < k - 1. The new state is the last k - 1 rows of xc.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, bias=bias)

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """x (b, l, c), state (b, c, k-1) -> y (b, l, c) (before any activation), new state (b, c, k-1)."""
        return causal_depthwise_conv(x, state, self.weight, self.bias)


def causal_depthwise_conv(x: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """``CausalDepthwiseConv1d``'s computation with the weights given: x (b, l, c), state (b, c, k-1), weight
    (c, 1, k), bias (c,) or None -> y (b, l, c), new state (b, c, k-1). The linear-attention mixers call it once on
    the channels of q, k and v together (their three convolutions' weights concatenated)."""
    k, l = weight.shape[-1], x.shape[1]
    xc = torch.cat([state.transpose(1, 2).to(x.dtype), x], dim=1)  # (b, k-1+l, c)
    w = weight[:, 0, :].to(x.dtype)  # (c, k)
    # no bias: the short convolutions of the linear-attention mixers (fla's conv_bias=False)
    y = xc[:, :l] * w[:, 0] if bias is None else torch.addcmul(bias.to(x.dtype), xc[:, :l], w[:, 0])
    for j in range(1, k):
        y = torch.addcmul(y, xc[:, j:j + l], w[:, j])
    new_state = xc[:, xc.shape[1] - (k - 1):].transpose(1, 2).contiguous()
    return y, new_state


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(sum(x²) + eps) over the last dimension, in at least float32 (fla's ``l2norm``): (..., K) -> (..., K)."""
    v = x.to(torch.promote_types(x.dtype, torch.float32))
    return v * torch.rsqrt(v.pow(2).sum(-1, keepdim=True) + eps)


class HeadRMSNorm(nn.Module):
    """The output norm of the linear-attention mixers: RMSNorm over each head's V channels, then, when a gate is
    given, times silu(gate) (fla's ``FusedRMSNormGated``, activation swish; without a gate its ``RMSNorm``).

    o (b, l, h, V), gate (b, l, h, V) or None -> (b, l, h, V) in o's dtype; weight (V,) shared by the heads.
    """

    def __init__(self, head_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(head_dim))

    def forward(self, o: Tensor, gate: Tensor | None = None) -> Tensor:
        dtype = torch.promote_types(o.dtype, torch.float32)
        v = o.to(dtype)
        v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(dtype)
        if gate is not None:
            v = v * F.silu(gate.to(dtype))
        return v.to(o.dtype)


class SwiGLU(nn.Module):
    """The MLP sublayer of a block (``model.mlp_expand`` > 0): down(silu(gate(x)) ⊙ up(x)), (b, l, d) -> (b, l, d).

    The names and the layout are those of fla's ``GatedMLP`` and of Llama (``gate_proj``, ``up_proj`` (f, d),
    ``down_proj`` (d, f), no biases), so fla checkpoints load without renaming inside the MLP.
    """

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
