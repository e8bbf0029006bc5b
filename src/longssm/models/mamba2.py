"""Mamba-2: the SSD mixer, the block of the Mamba-2 language model (``lm.RecurrentLM`` with RMSNorm).

References
    [1] T. Dao, A. Gu. "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured
        State Space Duality." ICML 2024. arXiv:2405.21060. Section 7 (the Mamba-2 block, Fig. 6), Eq. 2.
    [2] state-spaces/mamba, ``mamba_ssm/modules/mamba2.py`` (official block) and
        ``mamba_ssm/models/mixer_seq_simple.py`` (the LM around it).
    [3] Hugging Face transformers, ``models/mamba2/modeling_mamba2.py`` (``Mamba2ForCausalLM``): parameter names
        here are identical, so its ``state_dict`` loads with ``strict=True``. The matching HF config has
        num_heads = h, head_dim = p, n_groups = g, state_size = n, expand, hidden_size = d, conv_kernel = k,
        chunk_size, use_bias = False, use_conv_bias = True; ``tie_word_embeddings`` defaults to False there
        (build the LM with ``tie_embeddings=False`` for such checkpoints) and is True in [2]'s LM and ours.
    [4] state-spaces/mamba, ``mamba_ssm/ops/triton/ssd_combined.py`` (``mamba_chunk_scan_combined``): the fused SSD
        kernel that ``model.scan mamba_ssm`` runs (``ops/ssd_mamba_ssm.py``); ``auto`` picks it on CUDA when the
        package imports. ``chunked`` is ``ops/ssd.py``'s chunked SSD, ``reference`` its sequential loop.

Glossary (code letter -> paper symbol)
    b  batch          l  sequence length      d  d_model (D)         e  d_inner = expand * d (= h p)
    h  heads = e / p  p  head_dim (P)         n  d_state (N)         g  n_groups of B, C (h % g == 0)
    k  d_conv, the causal convolution width (K)                      v  vocab_size (V)
    Δ  dt (b, l, h): softplus(in_proj Δ part + dt_bias) s_Δ          A = -exp(A_log) s_A (h,): one scalar per head
    B, C  (b, l, g, n): input-dependent state projections            D  (h,): skip connection
    z  (b, l, e): the gate                                           xBC: x, B, C before the convolution
    s_Δ, s_A  this layer's multipliers of Δ and A (model.delta_scale / a_scale, set by ``longssm calibrate``; 1)

The block ([1] Fig. 6, "parallel" projections):
    z, xBC, Δ = in_proj(u)                             (one matmul; split in this order: e, e + 2 g n, h)
    x, B, C   = split(silu(conv1d(xBC)))               (causal depthwise convolution over time, width k)
    y         = SSD(x, Δ, A, B, C) + D x               ([1] Eq. 2 with A_t = exp(Δ_t A) I, see ``ops/ssd.py``)
    out       = out_proj(RMSNorm_g(y * silu(z)))       (gated RMSNorm, normalised per group of e / g channels)
and the residual stream u <- u + block(RMSNorm(u)), L times; logits = lm_head(RMSNorm(u)).

Recurrent state per layer i (the whole past, so that any split of a sequence gives the same logits):
    "layers.{i}.conv"  (b, e + 2 g n, k - 1)  the last k - 1 inputs xBC of the convolution, oldest first
    "layers.{i}.ssm"   (b, h, p, n)           the SSD state h_t
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import UserError
from ..ops.dispatch import ScanImpl
from ..ops.ssd import ssd_chunked, ssd_ref
from ..ops.ssd_mamba_ssm import ssd_mamba_ssm
from .layers import CausalDepthwiseConv1d, register_length_scales


class GatedRMSNorm(nn.Module):
    """RMSNorm_g(y * silu(z)): gate, then normalise each of g groups of e / g channels ([2] norm_before_gate=False).

    y, z (..., e) -> (..., e).
    """

    def __init__(self, e: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(e))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        dtype = torch.promote_types(y.dtype, torch.float32)
        v = y.to(dtype) * F.silu(z.to(dtype))
        v = v.unflatten(-1, (-1, self.group_size))
        v = (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        return self.weight * v.to(y.dtype)


class Mamba2Mixer(nn.Module):
    """The Mamba-2 block ([1] Fig. 6): (b, l, d) and a layer state -> (b, l, d) and the new layer state.

    The SSD runs ``scan_impl``, which ``build_model`` chooses: ``chunked`` (``ssd_chunked``), ``reference``
    (``ssd_ref``) or the fused kernel of ``fast_kernels`` (``ssd_mamba_ssm``, [4]).
    """

    fast_kernels: ClassVar[tuple[str, ...]] = ("mamba_ssm",)
    scan_impl: ScanImpl

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        d, e, n, g, k = config.d_model, config.d_inner, config.d_state, config.n_groups, config.d_conv
        if e % config.head_dim:
            raise UserError(f"model.head_dim must divide expand * d_model = {e}; got {config.head_dim}")
        if (e // config.head_dim) % g:
            raise UserError(f"model.n_groups must divide the number of heads {e // config.head_dim}; got {g}")
        self.d_inner, self.d_state, self.n_groups, self.head_dim, self.d_conv = e, n, g, config.head_dim, k
        self.n_heads = e // config.head_dim
        self.conv_dim = e + 2 * g * n
        self.chunk_size = config.chunk_size
        self.in_proj = nn.Linear(d, e + self.conv_dim + self.n_heads, bias=False)
        self.conv1d = CausalDepthwiseConv1d(self.conv_dim, k)
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        self.norm = GatedRMSNorm(e, group_size=e // g, eps=config.norm_eps)
        self.out_proj = nn.Linear(e, d, bias=False)
        register_length_scales(self, config, layer_idx)  # s_Δ, s_A: 1 unless calibrated
        self.reset_ssm_parameters(config.dt_min, config.dt_max)
        with torch.no_grad():  # [2]'s ``_init_weights``: out_proj (kaiming uniform) scaled by 1/sqrt(n_layers)
            self.out_proj.weight.div_(math.sqrt(config.n_layers))

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float, dt_max: float, dt_floor: float = 1e-4) -> None:
        """[2]'s initialisation: Δ log-uniform in [dt_min, dt_max] (stored as softplus^-1), A ~ U[1, 16], D = 1.

        HF initialises A = 1, ..., h instead; we follow the official code (loaded weights override either).
        """
        h = self.n_heads
        dt = torch.exp(torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.log(torch.empty(h).uniform_(1.0, 16.0)))
        self.D.fill_(1.0)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """conv: the last k - 1 inputs xBC (e + 2gn, k - 1); ssm: the SSD state (h, p, n)."""
        return {"conv": (self.conv_dim, self.d_conv - 1), "ssm": (self.n_heads, self.head_dim, self.d_state)}

    def forward(self, u: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """u (b, l, d), state {conv (b, e + 2gn, k - 1), ssm (b, h, p, n)} -> out (b, l, d), the new state."""
        b, l, _ = u.shape
        e, g, n, h, p = self.d_inner, self.n_groups, self.d_state, self.n_heads, self.head_dim
        z, xBC, dt = self.in_proj(u).split([e, self.conv_dim, h], dim=-1)
        xBC, conv_state = self.conv1d(xBC, state["conv"])          # [1] Fig. 6 "Conv", continued from the state
        x, B, C = F.silu(xBC).split([e, g * n, g * n], dim=-1)

        dt = F.softplus(dt + self.dt_bias) * self.delta_scale                          # Δ (b, l, h)
        A = -torch.exp(self.A_log) * self.a_scale                                      # (h,)
        args = (x.reshape(b, l, h, p), dt, A, B.reshape(b, l, g, n), C.reshape(b, l, g, n))
        if self.scan_impl == "chunked":
            y, ssm_state = ssd_chunked(*args, D=self.D, initial_state=state["ssm"], chunk_size=self.chunk_size)
        elif self.scan_impl == "mamba_ssm":                         # [4]: the same SSD as one fused kernel
            y, ssm_state = ssd_mamba_ssm(*args, D=self.D, initial_state=state["ssm"], chunk_size=self.chunk_size)
        else:
            y, ssm_state = ssd_ref(*args, D=self.D, initial_state=state["ssm"])
        y = self.norm(y.reshape(b, l, e), z)
        return self.out_proj(y.to(u.dtype)), {"conv": conv_state, "ssm": ssm_state.to(state["ssm"].dtype)}
