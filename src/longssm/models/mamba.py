"""Mamba-1: the selective-SSM block, with an explicit, exactly chunkable recurrent state.

References
    [1] Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023.
        Sec. 3.2 + Alg. 2 (selective SSM), Sec. 3.4 + Fig. 3 (the Mamba block), Sec. 3.6 (Δ/A/D init).
    [2] Hugging Face ``transformers`` ``MambaForCausalLM``: parameter names are identical (the LM around the
        block is ``lm.RecurrentLM`` with RMSNorm), so its weights load with ``strict=True``; original
        ``mamba_ssm`` files go through ``hf_adapters.MAMBA``.
    [3] johnma2006/mamba-minimal: the layout this file follows.

Glossary
    b  batch       l  sequence length       d  d_model          e  d_inner = expand · d
    n  d_state     k  d_conv                r  dt_rank          V  vocab_size
    Δ  time step (b, l, e)    A  (e, n), A = -exp(A_log)    B, C  (b, l, n)    D  (e,)
    s_Δ, s_A  this layer's multipliers of Δ and A (model.delta_scale / a_scale, set by ``longssm calibrate``; 1)

Block (Fig. 3, right):   x ← x + out_proj( SSM( silu(conv1d(in_proj_x(norm(x)))) ) · silu(in_proj_z(norm(x))) )
(the residual and the norm are the shell's; ``MambaMixer`` is everything inside ``x + ...``).

State (one entry per layer i, see ``longssm.models.base``):
    "layers.{i}.conv"  (b, e, k-1)  the last k-1 inputs of the causal depthwise convolution
    "layers.{i}.ssm"   (b, e, n)    h of the selective SSM (Eq. 2a)
Feeding a sequence in pieces with the carried state gives exactly the logits and state of one pass.

Where we differ from the official code: the residual stream stays in the parameters' dtype (the official
``residual_in_fp32`` only matters for half precision, which we do not use on CPU); RMSNorm computes in at
least float32 but keeps float64 when the model is float64, so the chunked recurrence can be tested to 1e-10.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..ops.dispatch import ScanImpl
from ..ops.selective_scan import selective_scan
from .layers import CausalDepthwiseConv1d, register_length_scales


class MambaMixer(nn.Module):
    """The Mamba block's sequence mixer [1, Fig. 3]: gated, convolved selective SSM. (b, l, d) -> (b, l, d).

    The selective scan runs ``scan_impl`` (``ops.selective_scan``'s ``impl``: chunked, reference, or the Triton
    kernel of ``fast_kernels``), which ``build_model`` chooses.
    """

    fast_kernels: ClassVar[tuple[str, ...]] = ("triton",)
    scan_impl: ScanImpl

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        d, e, n, k = config.d_model, config.d_inner, config.d_state, config.d_conv
        self.d_inner, self.d_state, self.d_conv = e, n, k
        self.dt_rank = config.dt_rank or math.ceil(d / 16)

        self.in_proj = nn.Linear(d, 2 * e, bias=False)  # -> x, z
        self.conv1d = CausalDepthwiseConv1d(e, k)
        self.x_proj = nn.Linear(e, self.dt_rank + 2 * n, bias=False)  # -> Δ (rank r), B, C
        self.dt_proj = nn.Linear(self.dt_rank, e, bias=True)  # Δ = softplus(bias + W·s_Δ(x)), Alg. 2 / Sec. 3.6
        self.A_log = nn.Parameter(torch.empty(e, n))
        self.D = nn.Parameter(torch.empty(e))
        self.out_proj = nn.Linear(e, d, bias=False)
        register_length_scales(self, config, layer_idx)  # s_Δ, s_A: 1 unless calibrated
        self.reset_ssm_parameters(config.dt_min, config.dt_max)
        with torch.no_grad():  # as the official ``_init_weights``: the residual branch scaled by 1/sqrt(n_layers)
            self.out_proj.weight.div_(math.sqrt(config.n_layers))

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float, dt_max: float, dt_floor: float = 1e-4) -> None:
        """S4D-real A = -(1..n), D = 1, and Δ's bias = softplus⁻¹(Δ₀), Δ₀ log-uniform in [dt_min, dt_max] [1, 3.6]."""
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_inner, -1))
        self.D.fill_(1.0)
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """conv: the last k-1 convolution inputs (e, k-1); ssm: h (e, n)."""
        return {"conv": (self.d_inner, self.d_conv - 1), "ssm": (self.d_inner, self.d_state)}

    def forward(self, hidden: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """hidden (b, l, d), state {conv (b, e, k-1), ssm (b, e, n)} -> out (b, l, d), the new state."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (b, l, e) each
        x, conv_state = self.conv1d(x, state["conv"])  # causal, continued from the last k-1 inputs
        x = F.silu(x)  # (b, l, e)

        # Selection (Alg. 2): Δ, B, C depend on the input.
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = dt @ self.dt_proj.weight.t()  # (b, l, e); bias and softplus are applied in the scan
        # Calibrated length extension: Δ·s_Δ enters exp(ΔA) and ΔB (Eq. 4, ZOH's B̅ too), so it is applied as
        # A·s_Δ and B·s_Δ (the scan takes Δ before its softplus); s_A multiplies A alone.
        A = -torch.exp(self.A_log) * (self.a_scale * self.delta_scale)  # (e, n)
        B = B * self.delta_scale
        y, ssm_state = selective_scan(
            x, delta, A, B, C, D=self.D, z=z, delta_bias=self.dt_proj.bias, delta_softplus=True,
            initial_state=state["ssm"], impl=self.scan_impl,
        )  # y = (SSM(x) + D x) · silu(z), (b, l, e)
        return self.out_proj(y), {"conv": conv_state, "ssm": ssm_state}
