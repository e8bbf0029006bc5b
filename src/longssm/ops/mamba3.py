"""Mamba-3's SISO recurrence: exponential-trapezoidal discretisation with data-dependent rotations, as a sequential
reference and a chunked algorithm.

References
    [1] A. Lahoti, K. Y. Li, B. Chen, C. Wang, A. Bick, J. Z. Kolter, T. Dao, A. Gu. "Mamba-3: Improved Sequence
        Modeling using State Space Principles." ICLR 2026, arXiv:2603.15569: the exponential-trapezoidal
        discretisation, and the complex-valued state realised as data-dependent rotations of B and C.
    [2] state-spaces/mamba, ``mamba_ssm/ops/triton/mamba3/`` (``mamba3_siso_combined``; its fused kernel is
        ``model.scan mamba_ssm``, ``mamba3_mamba_ssm.py``; this module is ours alone).

Glossary (code letter -> paper symbol)
    b  batch          l  sequence length      h  heads               p  head dim (P)
    n  state size (N) S  rotation angles per head (S <= n / 2: dimensions 2i, 2i + 1 rotate by θ_i, the rest not)
    x  (b, l, h, p): the input of the SSM, one head per group of p channels
    Δ  dt (b, l, h) > 0: step size (after softplus)
    a  (b, l, h) <= 0: log-decay A_t Δ_t (A_t is data-dependent in Mamba-3)
    λ  = sigmoid(trap) (b, l, h): the trapezoid's weight on the current step (λ = 1: Euler, Mamba-2's rule)
    B, C  (b, l, h, n): input / output projections, per head (the mixer adds each head's bias to its group's)
    r  angle (b, l, h, S): the raw angle projection; the rotation advances by π tanh(r_t) Δ_t per step
    θ  (b, l, h, S): the accumulated angles, R(θ) the block-diagonal rotation of pairs (2i, 2i + 1)
    D  (h,): skip connection

The recurrence of [1] (SISO), per head and for every p, with B̃_t = R(θ_t) B_t, C̃_t = R(θ_t) C_t:
    θ_t = θ_{t-1} + π tanh(r_t) Δ_t                                                   (mod 2π)
    h_t = e^{a_t} h_{t-1} + (1 - λ_t) Δ_t e^{a_t} x_{t-1} B̃_{t-1}^T + λ_t Δ_t x_t B̃_t^T      h_t: (p, n)
    y_t = h_t C̃_t + D x_t
The second term is the trapezoid's other end: the previous step's input, decayed once. Its carried state is
therefore four tensors, the ``Mamba3State``:
    angle (b, h, S)      θ_t, the rotation reached so far (kept in [0, 2π))
    ssm   (b, h, p, n)   h_t
    k     (b, h, n)      B̃_t, the last step's rotated input projection
    v     (b, h, p)      x_t, the last step's input
so a sequence split anywhere and run piece by piece, each piece starting from the state the last one returned,
gives exactly the outputs of the whole sequence.

The chunked form: unrolled, x_s B̃_s^T enters h_t (t > s) with weight e^{a_{s+1} + ... + a_t} w_s where
w_s = λ_s Δ_s + (1 - λ_{s+1}) Δ_{s+1}, and enters h_s with λ_s Δ_s. So y is the decayed scan of SSD
(``ssd.decayed_scan``) with inputs w_s x_s, minus the surplus (1 - λ_{s+1}) Δ_{s+1} (C̃_s . B̃_s) x_s on the
diagonal; the trapezoid's term of the first step (from the carried k, v) is added to the carried h, and the last
step's weight is λ Δ alone (its other end belongs to the next piece).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .ssd import decayed_scan

TWO_PI = 2 * math.pi


class Mamba3State(NamedTuple):
    """The carried state of one Mamba-3 layer (see the module docstring): angle (b, h, S), ssm (b, h, p, n),
    k (b, h, n), v (b, h, p)."""

    angle: Tensor
    ssm: Tensor
    k: Tensor
    v: Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """Half precision inputs are computed in float32; float64 stays."""
    return torch.promote_types(x.dtype, torch.float32)


def check_shapes(x: Tensor, dt: Tensor, a: Tensor, trap: Tensor, B: Tensor, C: Tensor,
                 angle: Tensor) -> tuple[int, ...]:
    b, l, h, p = x.shape
    n, S = B.shape[-1], angle.shape[-1]
    if (dt.shape != (b, l, h) or a.shape != dt.shape or trap.shape != dt.shape or B.shape != (b, l, h, n)
            or C.shape != B.shape or angle.shape != (b, l, h, S) or n < 2 * S):
        raise ValueError(
            f"mamba3: expected x (b,l,h,p), dt = a = trap (b,l,h), B = C (b,l,h,n), angle (b,l,h,S) with 2S <= n; "
            f"got x {tuple(x.shape)}, dt {tuple(dt.shape)}, a {tuple(a.shape)}, trap {tuple(trap.shape)}, "
            f"B {tuple(B.shape)}, C {tuple(C.shape)}, angle {tuple(angle.shape)}")
    return b, l, h, p, n, S


def zero_state(x: Tensor, n: int, S: int, dtype: torch.dtype) -> Mamba3State:
    """The state before any token (no rotation, empty memory, no previous step) for x (b, l, h, p)."""
    b, _, h, p = x.shape
    return Mamba3State(x.new_zeros(b, h, S, dtype=dtype), x.new_zeros(b, h, p, n, dtype=dtype),
                       x.new_zeros(b, h, n, dtype=dtype), x.new_zeros(b, h, p, dtype=dtype))


def start_state(state: Mamba3State | None, x: Tensor, n: int, S: int, dtype: torch.dtype) -> Mamba3State:
    return zero_state(x, n, S, dtype) if state is None else Mamba3State(*(t.to(dtype) for t in state))


def rotate(u: Tensor, theta: Tensor) -> Tensor:
    """R(θ) u: pairs (u_{2i}, u_{2i+1}) rotated by θ_i for i < S, the other n - 2S dimensions unchanged.

    u (..., n), theta (..., S) -> (..., n)."""
    S = theta.shape[-1]
    pairs = u[..., : 2 * S].unflatten(-1, (S, 2))
    u0, u1 = pairs[..., 0], pairs[..., 1]
    cos, sin = theta.cos(), theta.sin()
    rotated = torch.stack((u0 * cos - u1 * sin, u0 * sin + u1 * cos), dim=-1).flatten(-2)
    return torch.cat((rotated, u[..., 2 * S:]), dim=-1)


def angle_steps(angle: Tensor, dt: Tensor) -> Tensor:
    """π tanh(r_t) Δ_t: the rotation of each step. angle (b, l, h, S), dt (b, l, h) -> (b, l, h, S)."""
    return math.pi * torch.tanh(angle) * dt[..., None]


def mamba3_ref(
    x: Tensor, dt: Tensor, a: Tensor, trap: Tensor, B: Tensor, C: Tensor, angle: Tensor, D: Tensor | None = None,
    initial_state: Mamba3State | None = None,
) -> tuple[Tensor, Mamba3State]:
    """The recurrence of the module docstring one step at a time: the oracle of ``mamba3_chunked``.

    x (b, l, h, p), dt, a, trap (b, l, h), B, C (b, l, h, n), angle (b, l, h, S), D (h,), initial_state a
    ``Mamba3State`` or None (zeros) -> y (b, l, h, p) in x's dtype, the final state in the compute dtype (at least
    float32). Exact in float64; time-major so that the backward pass stays linear in l.
    """
    b, l, h, p, n, S = check_shapes(x, dt, a, trap, B, C, angle)
    dtype = compute_dtype(x)
    theta, state, k_prev, v_prev = start_state(initial_state, x, n, S, dtype)
    lam = torch.sigmoid(trap.to(dtype))
    ys = []
    steps = angle_steps(angle.to(dtype), dt.to(dtype))
    for t in range(l):
        theta = torch.remainder(theta + steps[:, t], TWO_PI)
        k, q = rotate(B[:, t].to(dtype), theta), rotate(C[:, t].to(dtype), theta)          # (b, h, n)
        x_t, dt_t, decay = x[:, t].to(dtype), dt[:, t].to(dtype), a[:, t].to(dtype).exp()  # (b, h, p), (b, h)
        previous = ((1 - lam[:, t]) * dt_t * decay)[..., None, None] * v_prev[..., None] * k_prev[:, :, None]
        current = (lam[:, t] * dt_t)[..., None, None] * x_t[..., None] * k[:, :, None]
        state = decay[..., None, None] * state + previous + current
        ys.append(torch.einsum("bhpn,bhn->bhp", state, q))
        k_prev, v_prev = k, x_t
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p, dtype=dtype)
    if D is not None:
        y = y + D.to(dtype)[:, None] * x.to(dtype)
    return y.to(x.dtype), Mamba3State(theta, state, k_prev, v_prev)


def accumulated_angles(theta0: Tensor, angle: Tensor, dt: Tensor) -> Tensor:
    """θ_t = θ_0 + Σ_{s<=t} π tanh(r_s) Δ_s mod 2π, summed in float64 (at L = 32k the sum reaches ~1e4 rad,
    where float32 would lose 1e-3 rad). theta0 (b, h, S), angle (b, l, h, S), dt (b, l, h) -> (b, l, h, S) in
    theta0's dtype."""
    total = theta0.double()[:, None] + angle_steps(angle.double(), dt.double()).cumsum(dim=1)
    return torch.remainder(total, TWO_PI).to(theta0.dtype)


def mamba3_chunked(
    x: Tensor, dt: Tensor, a: Tensor, trap: Tensor, B: Tensor, C: Tensor, angle: Tensor, D: Tensor | None = None,
    initial_state: Mamba3State | None = None, chunk_size: int = 64,
) -> tuple[Tensor, Mamba3State]:
    """``mamba3_ref`` by the chunked algorithm (the module docstring's last paragraph, SSD's chunks inside).

    Same signature and shapes as ``mamba3_ref`` plus ``chunk_size``; differentiable w.r.t. every input and every
    tensor of ``initial_state``.
    """
    b, l, h, p, n, S = check_shapes(x, dt, a, trap, B, C, angle)
    dtype = compute_dtype(x)
    theta0, h0, k0, v0 = start_state(initial_state, x, n, S, dtype)
    if l == 0:
        return x.new_zeros(b, 0, h, p), Mamba3State(theta0, h0, k0, v0)
    x_, dt_, lam = x.to(dtype), dt.to(dtype), torch.sigmoid(trap.to(dtype))
    theta = accumulated_angles(theta0, angle.to(dtype), dt_)                          # (b, l, h, S)
    k, q = rotate(B.to(dtype), theta), rotate(C.to(dtype), theta)                     # (b, l, h, n)
    other_end = (1 - lam) * dt_                                                       # (1 - λ_t) Δ_t
    surplus = torch.cat((other_end[:, 1:], other_end.new_zeros(b, 1, h)), dim=1)    # (1 - λ_{s+1}) Δ_{s+1}
    weight = lam * dt_ + surplus                                                      # w_s
    start = h0 + other_end[:, 0, :, None, None] * v0[..., None] * k0[:, :, None]      # the first step's other end
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, dt, a, trap, B, C, angle, *(initial_state or ()), *([D] if D is not None else []))
    )
    y, state = decayed_scan(weight[..., None] * x_, a.to(dtype), k, q, start, chunk_size, needs_grad)
    y = y - (surplus * (q * k).sum(-1))[..., None] * x_
    if D is not None:
        y = y + D.to(dtype)[:, None] * x_
    return y.to(x.dtype), Mamba3State(theta[:, -1], state, k[:, -1], x_[:, -1])
