"""Mamba-3 (SISO): the mixer of the Mamba-3 language model (``lm.RecurrentLM`` with RMSNorm).

References
    [1] A. Lahoti, K. Y. Li, B. Chen, C. Wang, A. Bick, J. Z. Kolter, T. Dao, A. Gu. "Mamba-3: Improved Sequence
        Modeling using State Space Principles." ICLR 2026, arXiv:2603.15569.
    [2] state-spaces/mamba, ``mamba_ssm/modules/mamba3.py`` (``Mamba3``, is_mimo=False, is_outproj_norm=False):
        parameter names and shapes here are its own, so its ``state_dict`` loads with ``strict=True`` (``B_bias``,
        ``C_bias`` are (h, 1, n): the 1 is [2]'s MIMO rank, 1 for SISO).
    [3] state-spaces/mamba, ``mamba_ssm/ops/triton/mamba3/mamba3_siso_combined.py``: the fused kernel that
        ``model.scan mamba_ssm`` runs (``ops/mamba3_mamba_ssm.py``); ``chunked`` is ``ops/mamba3.py``'s chunked
        algorithm, ``reference`` its sequential loop.

Glossary (code letter -> paper symbol)
    b  batch          l  sequence length      d  d_model (D)         e  d_inner = expand * d (= h p)
    h  heads = e / p  p  head_dim (P)         n  d_state (N)         g  n_groups of B, C (h % g == 0)
    S  rotation angles = (rope_fraction * n rounded down to even) / 2     v  vocab_size (V)
    Δ  dt (b, l, h): softplus(dd_dt + dt_bias)                      A  (b, l, h): -softplus(dd_A) <= -A_floor
    λ  sigmoid(trap) (b, l, h): the trapezoid's weight on the current step
    B, C  (b, l, g, n) -> RMSNorm, then each head's bias: (b, l, h, n)      D  (h,): skip connection
    z  (b, l, e): the output gate

The block (no convolution, unlike Mamba-1/2: the trapezoid's two-tap input plays its part):
    z, x, B, C, dd_dt, dd_A, trap, r = in_proj(u)      (one matmul; split in this order: e, e, gn, gn, h, h, h, S)
    B, C      = RMSNorm(B) + B_bias_h, RMSNorm(C) + C_bias_h       (per head h, from its group)
    y         = Mamba3(x, Δ, A Δ, trap, B, C, r) + D x             (``ops/mamba3.py``: rotations, trapezoid)
    out       = out_proj(y * silu(z))
and the residual stream u <- u + block(RMSNorm(u)), L times; logits = lm_head(RMSNorm(u)).

Recurrent state per layer i (``ops.mamba3.Mamba3State``: the whole past, so any split gives the same logits):
    "layers.{i}.angle"  (b, h, S)     θ, the accumulated rotation angles (in [0, 2π))
    "layers.{i}.ssm"    (b, h, p, n)  the SSM state h_t
    "layers.{i}.k"      (b, h, n)     the last token's rotated B (the trapezoid's other end)
    "layers.{i}.v"      (b, h, p)     the last token's x
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
from ..ops.mamba3 import Mamba3State, mamba3_chunked, mamba3_ref
from ..ops.mamba3_mamba_ssm import mamba3_mamba_ssm
from .layers import RMSNorm

A_FLOOR = 1e-4
"""The largest A may be is -A_FLOOR ([2]'s default): every step decays the state a little."""


def rotation_angles(d_state: int, rope_fraction: float) -> int:
    """S, the angles per head: [2]'s rule (rope_fraction * n, rounded down to even, halved)."""
    rotated = int(d_state * rope_fraction)
    return (rotated - rotated % 2) // 2


class Mamba3Mixer(nn.Module):
    """The Mamba-3 SISO block ([1], [2]): (b, l, d) and a layer state -> (b, l, d) and the new layer state."""

    fast_kernels: ClassVar[tuple[str, ...]] = ("mamba_ssm_mamba3",)
    scan_impl: ScanImpl

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        d, e, n, g = config.d_model, config.d_inner, config.d_state, config.n_groups
        if e % config.head_dim:
            raise UserError(f"model.head_dim must divide expand * d_model = {e}; got {config.head_dim}")
        if (e // config.head_dim) % g:
            raise UserError(f"model.n_groups must divide the number of heads {e // config.head_dim}; got {g}")
        S = rotation_angles(n, config.rope_fraction)
        if S < 1:
            raise UserError(f"mamba3 needs model.d_state * model.rope_fraction >= 2 (one rotated pair); got "
                            f"d_state={n}, rope_fraction={config.rope_fraction}")
        self.d_inner, self.d_state, self.n_groups, self.head_dim, self.n_angles = e, n, g, config.head_dim, S
        self.n_heads = e // config.head_dim
        self.chunk_size = config.chunk_size
        h = self.n_heads
        self.in_proj = nn.Linear(d, 2 * e + 2 * g * n + 3 * h + S, bias=False)
        self.dt_bias = nn.Parameter(torch.empty(h))
        self.B_bias = nn.Parameter(torch.ones(h, 1, n))  # (h, rank 1, n), as [2]
        self.C_bias = nn.Parameter(torch.ones(h, 1, n))
        self.B_norm = RMSNorm(n, eps=config.norm_eps)
        self.C_norm = RMSNorm(n, eps=config.norm_eps)
        self.D = nn.Parameter(torch.ones(h))
        self.out_proj = nn.Linear(e, d, bias=False)
        self.reset_dt_bias(config.dt_min, config.dt_max)
        with torch.no_grad():  # as [2]'s LM init: out_proj (kaiming uniform) scaled by 1/sqrt(n_layers)
            self.out_proj.weight.div_(math.sqrt(config.n_layers))

    @torch.no_grad()
    def reset_dt_bias(self, dt_min: float, dt_max: float, dt_floor: float = 1e-4) -> None:
        """[2]'s initialisation of Δ: log-uniform in [dt_min, dt_max], stored as softplus^-1 (B, C biases 1, D 1)."""
        h = self.n_heads
        dt = torch.exp(torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """angle (h, S), ssm (h, p, n), k (h, n), v (h, p): see the module docstring."""
        h, p, n = self.n_heads, self.head_dim, self.d_state
        return {"angle": (h, self.n_angles), "ssm": (h, p, n), "k": (h, n), "v": (h, p)}

    def forward(self, u: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """u (b, l, d), state {angle, ssm, k, v} -> out (b, l, d), the new state (same keys and shapes)."""
        b, l, _ = u.shape
        e, g, n, h, p, S = self.d_inner, self.n_groups, self.d_state, self.n_heads, self.head_dim, self.n_angles
        z, x, B, C, dd_dt, dd_A, trap, angle = self.in_proj(u).split([e, e, g * n, g * n, h, h, h, S], dim=-1)
        dt = F.softplus(dd_dt + self.dt_bias)                                          # Δ (b, l, h)
        a = -F.softplus(dd_A).clamp(min=A_FLOOR) * dt                                  # A Δ <= 0
        heads = h // g
        B = self.B_norm(B.reshape(b, l, g, n)).repeat_interleave(heads, dim=2) + self.B_bias[:, 0]
        C = self.C_norm(C.reshape(b, l, g, n)).repeat_interleave(heads, dim=2) + self.C_bias[:, 0]
        angle = angle[:, :, None].expand(b, l, h, S)
        args = (x.reshape(b, l, h, p), dt, a, trap, B, C, angle)
        start = Mamba3State(state["angle"], state["ssm"], state["k"], state["v"])
        if self.scan_impl == "chunked":
            y, final = mamba3_chunked(*args, D=self.D, initial_state=start, chunk_size=self.chunk_size)
        elif self.scan_impl == "mamba_ssm":
            y, final = mamba3_mamba_ssm(*args, D=self.D, initial_state=start, chunk_size=self.chunk_size)
        else:
            y, final = mamba3_ref(*args, D=self.D, initial_state=start)
        y = y.reshape(b, l, e) * F.silu(z)
        new_state = {name: t.to(state[name].dtype) for name, t in zip(("angle", "ssm", "k", "v"), final)}
        return self.out_proj(y.to(u.dtype)), new_state
