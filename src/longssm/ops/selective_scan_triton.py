"""Mamba-1 selective scan as Triton kernels that take the initial state and return the final state.

References
    [1] Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023 (Alg. 2, Eq. 2, 4).
    [2] Griewank & Walther, "Evaluating Derivatives", 2008, Ch. 12: checkpointed reverse sweeps (the backward).

Glossary (as in ``selective_scan.py``)
    b  batch               l  sequence length        e  channels (d_inner)      n  state size (d_state)
    u  input x_t (b, l, e)                            Δ  delta, time step (b, l, e), before bias and softplus
    A  diagonal state matrix (e, n)                   B, C  (b, l, n)           D  skip (e,)
    z  gate (b, l, e)                                 h  state (b, e, n)        T  time steps per chunk

One kernel call computes everything of :func:`longssm.ops.selective_scan.selective_scan_ref` in a single pass
over the inputs, the discretisation, skip and gate included:

    Δ_t = softplus(Δ_t + bias)                                   (0)
    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t                   (1)
    y_t = (h_t C_t + D u_t) · silu(z_t)                          (2)

Forward kernel: one program per (batch, block of BLOCK_E channels); it walks through time keeping its
(BLOCK_E, n) slice of h in registers, writes y and h_l, and (when a gradient is needed) the state entering each
chunk of T steps: (b, ⌈l/T⌉, e, n) checkpoints instead of all l states. The official CUDA kernel has no
initial state (see NOTES.md); here h_0 is just the register file's first value.

Backward kernel: the same grid walks the chunks in reverse. Per chunk it recomputes the chunk's states from its
checkpoint into a per-program scratch buffer (T, BLOCK_E, n) — stays in L1/L2 on a GPU — and then runs the
adjoint recurrence backwards through the chunk, with g_t = dL/dh_t and ȳ_t = dL/dy_t · silu(z_t):

    g_t = C_t ⊗ ȳ_t + exp(Δ_{t+1} A) ⊙ g_{t+1},   g after step l = dL/dh_l (the final state's gradient)   (3)
    d(Δu)_t = g_t B_t,   du_t = d(Δu)_t Δ_t + ȳ_t D,   dB_t = Σ_e g_t (Δ_t u_t),   dC_t = Σ_e h_t ȳ_t,
    r_t = g_t ⊙ exp(Δ_t A) ⊙ h_{t-1},   dA = Σ_{b,t} r_t Δ_t,   dΔ_t = d(Δu)_t u_t + Σ_n r_t A,
    dD = Σ_{b,t} ȳ_t u_t,   dz_t = dL/dy_t (h_t C_t + D u_t) silu'(z_t),   dh_0 = exp(Δ_1 A) ⊙ g_1,          (4)

and through (0) d(Δ+bias) = dΔ · sigmoid(Δ + bias), d bias = Σ_{b,t} of that. Sums over e (dB, dC) span
several programs and sums over b (dA, dD, d bias) span the batch: each program writes its partial sums to its
own slot of a buffer and torch adds them up (deterministic, no atomics).

All arithmetic is float32 whatever the input dtype. ``TRITON_INTERPRET=1`` at import time builds the kernels
for Triton's interpreter, which runs them on CPU tensors (no bfloat16 there): the tests use that.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRETED: bool = bool(triton.knobs.runtime.interpret)
"""True when the kernels below were built for Triton's interpreter (``TRITON_INTERPRET=1`` at import): they then
run on CPU tensors, otherwise on CUDA tensors only."""

DEFAULT_CHUNK = 32  # T: checkpoints cost b·(l/T)·e·n floats, the scratch buffer T·BLOCK_E·n per program
DEFAULT_BLOCK_E = 32  # channels per program


@triton.jit
def _softplus(x):
    """log(1 + eˣ) with torch's threshold (x > 20: x). log1p by Kahan's trick, log(w)·y/(w-1) with w = 1 + y,
    exact to a few ulps for small y (libdevice's log1p does not run in the interpreter)."""
    y = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + y
    log1p = tl.where(w == 1.0, y, tl.log(w) * (y / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _load_delta(delta_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ + bias (the softplus argument) and Δ after Eq. (0), both (BLOCK_E,) float32."""
    pre = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        pre += bias
    return pre, _softplus(pre) if SOFTPLUS else pre


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,  # inputs
    y_ptr, hl_ptr, ckpt_ptr,  # outputs: y (b, l, e), h_l (b, e, n), checkpoints (b, ⌈l/T⌉, e, n)
    L, E, N,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_CHECKPOINTS: tl.constexpr, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Eq. (0)-(2) for batch ``program_id(0)`` and channels ``program_id(1)·BLOCK_E + [0, BLOCK_E)``."""
    pid_b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    mask_e, mask_n = e < E, n < N
    mask_en = mask_e[:, None] & mask_n[None, :]
    offs_en = e[:, None] * N + n[None, :]  # into (e, n)

    A = tl.load(A_ptr + offs_en, mask=mask_en, other=0.0).to(tl.float32)
    D = tl.load(D_ptr + e, mask=mask_e, other=0.0).to(tl.float32) if HAS_D else 0.0
    bias = tl.load(bias_ptr + e, mask=mask_e, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
    h = tl.load(h0_ptr + pid_b * E * N + offs_en, mask=mask_en, other=0.0).to(tl.float32)  # (BLOCK_E, BLOCK_N)

    n_chunks = tl.cdiv(L, CHUNK)
    for c in range(0, n_chunks):
        if SAVE_CHECKPOINTS:
            tl.store(ckpt_ptr + (pid_b * n_chunks + c) * E * N + offs_en, h, mask=mask_en)
        for t in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, L)):
            row = pid_b * L + t
            u = tl.load(u_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
            _, delta = _load_delta(delta_ptr, row * E + e, mask_e, bias, HAS_BIAS, SOFTPLUS)
            B = tl.load(B_ptr + row * N + n, mask=mask_n, other=0.0).to(tl.float32)
            C = tl.load(C_ptr + row * N + n, mask=mask_n, other=0.0).to(tl.float32)
            h = tl.exp(delta[:, None] * A) * h + (delta * u)[:, None] * B[None, :]  # (1)
            y = tl.sum(h * C[None, :], axis=1) + D * u  # (2)
            if HAS_Z:
                z = tl.load(z_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
                y = y * z * tl.sigmoid(z)
            tl.store(y_ptr + row * E + e, y, mask=mask_e)
    tl.store(hl_ptr + pid_b * E * N + offs_en, h, mask=mask_en)


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dy_ptr, dhl_ptr,  # inputs
    scratch_ptr,  # (b, ⌈e/BLOCK_E⌉, T, BLOCK_E, BLOCK_N): a chunk's states h_{t-1}, one slot per program
    du_ptr, ddelta_ptr, dz_ptr, dh0_ptr,  # full gradients (b, l, e) and (b, e, n)
    dA_ptr, dD_ptr, dbias_ptr,  # partial sums over time, (b, e, n), (b, e), (b, e)
    dB_ptr, dC_ptr,  # partial sums over this program's channels, (b, ⌈e/BLOCK_E⌉, l, n)
    L, E, N,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Eq. (3)-(4) for the programs of the forward kernel, chunk by chunk from the last."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    slot = pid_b * tl.num_programs(1) + pid_e
    e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    mask_e, mask_n = e < E, n < N
    mask_en = mask_e[:, None] & mask_n[None, :]
    offs_en = e[:, None] * N + n[None, :]
    offs_scratch = slot * CHUNK * BLOCK_E * BLOCK_N + tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + n[None, :]

    A = tl.load(A_ptr + offs_en, mask=mask_en, other=0.0).to(tl.float32)
    D = tl.load(D_ptr + e, mask=mask_e, other=0.0).to(tl.float32) if HAS_D else 0.0
    bias = tl.load(bias_ptr + e, mask=mask_e, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
    g = tl.load(dhl_ptr + pid_b * E * N + offs_en, mask=mask_en, other=0.0).to(tl.float32)  # dL/dh after the chunk
    dA = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
    dD = tl.zeros((BLOCK_E,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_E,), dtype=tl.float32)

    n_chunks = tl.cdiv(L, CHUNK)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        start = c * CHUNK
        end = tl.minimum(start + CHUNK, L)
        # Recompute h_{t-1} for every step of the chunk from its checkpoint, Eq. (1).
        h = tl.load(ckpt_ptr + (pid_b * n_chunks + c) * E * N + offs_en, mask=mask_en, other=0.0)
        for t in range(start, end):
            tl.store(scratch_ptr + offs_scratch + (t - start) * BLOCK_E * BLOCK_N, h)
            row = pid_b * L + t
            u = tl.load(u_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
            _, delta = _load_delta(delta_ptr, row * E + e, mask_e, bias, HAS_BIAS, SOFTPLUS)
            B = tl.load(B_ptr + row * N + n, mask=mask_n, other=0.0).to(tl.float32)
            h = tl.exp(delta[:, None] * A) * h + (delta * u)[:, None] * B[None, :]
        tl.debug_barrier()
        # Reverse sweep through the chunk, Eq. (3)-(4).
        for j in range(0, end - start):
            t = end - 1 - j
            row = pid_b * L + t
            h_prev = tl.load(scratch_ptr + offs_scratch + (t - start) * BLOCK_E * BLOCK_N)
            u = tl.load(u_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
            pre, delta = _load_delta(delta_ptr, row * E + e, mask_e, bias, HAS_BIAS, SOFTPLUS)
            B = tl.load(B_ptr + row * N + n, mask=mask_n, other=0.0).to(tl.float32)
            C = tl.load(C_ptr + row * N + n, mask=mask_n, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
            decay = tl.exp(delta[:, None] * A)
            h = decay * h_prev + (delta * u)[:, None] * B[None, :]
            if HAS_Z:
                z = tl.load(z_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
                sig = tl.sigmoid(z)
                y = tl.sum(h * C[None, :], axis=1) + D * u
                tl.store(dz_ptr + row * E + e, dy * y * sig * (1.0 + z * (1.0 - sig)), mask=mask_e)
                dy = dy * z * sig  # ȳ_t
            dD += dy * u
            tl.store(dC_ptr + (slot * L + t) * N + n, tl.sum(h * dy[:, None], axis=0), mask=mask_n)
            g += C[None, :] * dy[:, None]  # g_t, Eq. (3)
            d_delta_u = tl.sum(g * B[None, :], axis=1)
            tl.store(dB_ptr + (slot * L + t) * N + n, tl.sum(g * (delta * u)[:, None], axis=0), mask=mask_n)
            r = g * decay * h_prev
            dA += r * delta[:, None]
            d_delta = d_delta_u * u + tl.sum(r * A, axis=1)
            if SOFTPLUS:
                d_delta = d_delta * tl.sigmoid(pre)
            dbias += d_delta
            tl.store(ddelta_ptr + row * E + e, d_delta, mask=mask_e)
            tl.store(du_ptr + row * E + e, d_delta_u * delta + dy * D, mask=mask_e)
            g = decay * g  # dL/dh_{t-1} from steps ≥ t
        tl.debug_barrier()  # the next chunk overwrites the scratch slots
    tl.store(dh0_ptr + pid_b * E * N + offs_en, g, mask=mask_en)
    tl.store(dA_ptr + pid_b * E * N + offs_en, dA, mask=mask_en)
    tl.store(dD_ptr + pid_b * E + e, dD, mask=mask_e)
    tl.store(dbias_ptr + pid_b * E + e, dbias, mask=mask_e)


def _flags(D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool) -> dict[str, bool]:
    """The kernels' compile-time switches: which of the optional inputs are given, and Eq. (0)'s softplus."""
    return dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus)


def _scan_forward(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, h0: Tensor, chunk: int, block_e: int, save_checkpoints: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Launch the forward kernel on contiguous inputs: y (b, l, e) in u's dtype, h_l (b, e, n) float32, and the
    chunk checkpoints (b, ⌈l/T⌉, e, n) float32 when ``save_checkpoints``."""
    b, l, e = u.shape
    n = A.shape[-1]
    y = torch.empty_like(u)
    h_last = torch.empty(b, e, n, device=u.device, dtype=torch.float32)
    ckpt = None
    if save_checkpoints:
        ckpt = torch.empty(b, triton.cdiv(l, chunk), e, n, device=u.device, dtype=torch.float32)
    _selective_scan_fwd_kernel[(b, triton.cdiv(e, block_e))](
        u, delta, A, B, C, u if D is None else D, u if z is None else z, u if delta_bias is None else delta_bias, h0,
        y, h_last, h_last if ckpt is None else ckpt,
        l, e, n, **_flags(D, z, delta_bias, delta_softplus), SAVE_CHECKPOINTS=save_checkpoints,
        CHUNK=chunk, BLOCK_E=block_e, BLOCK_N=triton.next_power_of_2(n),
    )
    return y, h_last, ckpt


class _TritonSelectiveScan(torch.autograd.Function):
    """(u, Δ, A, B, C, D, z, bias, h_0, softplus, T, BLOCK_E) -> (y (b, l, e), h_l (b, e, n) float32), Eq. (0)-(2);
    D, z, bias may be None. Every tensor argument must be contiguous."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, chunk, block_e):
        y, h_last, ckpt = _scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, chunk, block_e, True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0, ckpt)
        ctx.config = (delta_softplus, chunk, block_e)
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, delta, A, B, C, D, z, delta_bias, h0, ckpt = ctx.saved_tensors
        delta_softplus, chunk, block_e = ctx.config
        b, l, e = u.shape
        n = A.shape[-1]
        e_blocks, block_n = triton.cdiv(e, block_e), triton.next_power_of_2(n)
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        dh_last = torch.zeros_like(h0, dtype=torch.float32) if dh_last is None else dh_last.contiguous()

        def f32(*shape: int) -> Tensor:
            return torch.empty(*shape, device=u.device, dtype=torch.float32)

        du, ddelta, dz = torch.empty_like(u), torch.empty_like(delta), torch.empty_like(u) if z is not None else None
        dh0, dA, dD, dbias = f32(b, e, n), f32(b, e, n), f32(b, e), f32(b, e)
        dB, dC = f32(b, e_blocks, l, n), f32(b, e_blocks, l, n)
        _selective_scan_bwd_kernel[(b, e_blocks)](
            u, delta, A, B, C, u if D is None else D, u if z is None else z, u if delta_bias is None else delta_bias,
            ckpt, dy, dh_last, f32(b, e_blocks, chunk, block_e, block_n),
            du, ddelta, du if dz is None else dz, dh0, dA, dD, dbias, dB, dC,
            l, e, n, **_flags(D, z, delta_bias, delta_softplus), CHUNK=chunk, BLOCK_E=block_e, BLOCK_N=block_n,
        )
        return (
            du, ddelta, dA.sum(0).to(A.dtype), dB.sum(1).to(B.dtype), dC.sum(1).to(C.dtype),
            None if D is None else dD.sum(0).to(D.dtype), dz,
            None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype), dh0.to(h0.dtype), None, None, None,
        )


def selective_scan_triton(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False, initial_state: Tensor | None = None,
    chunk_size: int | None = None, block_e: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Selective scan, Eq. (0)-(2), as Triton kernels; same arguments and results as
    :func:`longssm.ops.selective_scan.selective_scan_ref`, differentiable w.r.t. every input including
    ``initial_state``.

    Args:
        u, delta: (b, l, e).  A: (e, n).  B, C: (b, l, n).  D, delta_bias: (e,).  z: (b, l, e).
        initial_state: h_0 (b, e, n); None = zeros.
        chunk_size: T, time steps between two saved states (None: ``DEFAULT_CHUNK``).
        block_e: channels per program, a power of two (None: ``DEFAULT_BLOCK_E``, at most e rounded up).
    Returns:
        y (b, l, e) and the final state h_l (b, e, n), both in the dtype of ``u``.
    Tensors must be on a CUDA device, or on the CPU when ``INTERPRETED``.
    """
    b, l, e = u.shape
    n = A.shape[-1]
    h0 = u.new_zeros(b, e, n) if initial_state is None else initial_state.contiguous()
    if l == 0:
        return u.new_zeros(u.shape), h0.to(u.dtype)
    chunk = chunk_size or DEFAULT_CHUNK
    block_e = block_e or min(DEFAULT_BLOCK_E, triton.next_power_of_2(e))
    args = [x if x is None else x.contiguous() for x in (u, delta, A, B, C, D, z, delta_bias)]
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (*args, h0)):
        y, h_last = _TritonSelectiveScan.apply(*args, h0, delta_softplus, chunk, block_e)
    else:  # evaluation: no checkpoints, no graph
        y, h_last, _ = _scan_forward(*args, delta_softplus, h0, chunk, block_e, save_checkpoints=False)
    return y, h_last.to(u.dtype)
