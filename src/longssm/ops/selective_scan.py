"""Mamba-1 selective scan: a sequential reference and a chunked fast version with the same signature.

References
    [1] Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023 (Alg. 2, Eq. 2, 4).
    [2] Griewank & Walther, "Evaluating Derivatives", 2008, Ch. 12: checkpointed reverse sweeps (the backward).

Glossary (letters used in every shape below)
    b  batch               l  sequence length        e  channels (d_inner)      n  state size (d_state)
    u  input x_t (b, l, e)                            Δ  delta, time step (b, l, e)
    A  continuous state matrix, diagonal (e, n), A < 0
    B, C  input-dependent input/output projections (b, l, n)
    D  skip connection (e,)                           z  gate (b, l, e): y ← y · silu(z)
    h  state (b, e, n)

The recurrence (Eq. 2a/2b with the discretisation of [1], Sec. 3.5: ZOH for A, Euler for B):

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t          (1)
    y_t = h_t C_t + D u_t                                (2)

Layout: time is dimension 1 (``(b, l, e)``), as the model's linear layers produce it; the official CUDA
kernel takes ``(b, e, l)``. The state is ``(b, e, n)`` as in the official code and HF's cache.

``selective_scan_ref`` is the plain loop of Eq. (1)-(2). ``selective_scan_fast`` computes the same thing in
blocks of time steps with a hand-written backward (see the comment above it); both return
``(y, final_state)`` and accept an ``initial_state``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _discretisation_inputs(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    """Δ ← softplus(Δ + bias) as in the official kernel's ``delta_bias`` / ``delta_softplus``."""
    if delta_bias is not None:
        delta = delta + delta_bias
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _skip_and_gate(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """The end of Eq. (2) and the gate, shared by both scans: y ← (y + D u) · silu(z). y, u, z (b, l, e); D (e,)."""
    if D is not None:
        y = y + u * D
    if z is not None:
        y = y * F.silu(z)
    return y


def selective_scan_ref(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False, initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Sequential selective scan, Eq. (1)-(2), one step per token.

    Args:
        u, delta: (b, l, e).  A: (e, n).  B, C: (b, l, n).  D, delta_bias: (e,).  z: (b, l, e).
        initial_state: h_0 (b, e, n); None = zeros.
    Returns:
        y (b, l, e) and the final state h_l (b, e, n), both in the dtype of ``u``.
    """
    b, _, e = u.shape
    delta = _discretisation_inputs(delta, delta_bias, delta_softplus)
    h = u.new_zeros(b, e, A.shape[-1]) if initial_state is None else initial_state.to(u.dtype)
    ys = []
    # unbind over time: indexing x[:, t] inside the loop makes the backward quadratic in l.
    for u_t, delta_t, B_t, C_t in zip(u.unbind(1), delta.unbind(1), B.unbind(1), C.unbind(1)):
        h = torch.exp(delta_t[..., None] * A) * h + (delta_t * u_t)[..., None] * B_t[:, None, :]  # (1)
        ys.append(torch.einsum("ben,bn->be", h, C_t))  # (2), without D
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(u.shape)
    return _skip_and_gate(y, u, D, z), h


# ----------------------------------------------------------------------------------------------------------
# Fast scan: blocks of T time steps, a hand-written backward, and no (b, l, n, e) tensor for the whole
# sequence. Inside the function everything is time-major and the state is laid out (b, n, e), so that
#   - one step of Eq. (1) is a single fused addcmul_ on a contiguous (b, n, e) slice,
#   - the contractions over n (y = C·h, d(Δu) = g·B) are batched vector-matrix products and those over e
#     (dB, dC) are reductions along the contiguous innermost axis, and
#   - every exponent is Δ_t A ≤ 0 of a single step: no cumulative products are ever inverted, so large
#     Δ·|A| underflows to 0 instead of overflowing (the factorised exp(c_t)·Σ exp(-c_s)·b_s form overflows).
# Memory: the inputs, one state checkpoint (b, n, e) per block, and a few (T, b, n, e) block buffers, sized
# (_BLOCK_ELEMENTS) to stay in cache: on a 2-core AVX2 CPU 2M-element blocks were ~1.4x slower than 512K.
# Measured there and rejected: torch.compile of the block step (no faster than this eager code, ~20 s to
# compile per shape); einsum for the reductions (~50x slower: it permutes and copies).
# Caveat: one step is one op (three with the backward), so on an oversubscribed CPU the per-op thread
# synchronisation dominates and the advantage over a log-depth scan such as mambapy's pscan shrinks.
# The backward recomputes a block's states from its checkpoint and runs the adjoint recurrence
#   g_t = dL/dh_t = C_t ⊗ dy_t + exp(Δ_{t+1} A) ⊙ g_{t+1}                                            (3)
# backwards through the block; from g and the states h follow all gradients:
#   d(Δu)_t = g_t·B_t,  dB_t = g_t·(Δ_t u_t),  dC_t = h_t·dy_t,  r_t = g_t ⊙ exp(Δ_t A) ⊙ h_{t-1},
#   dA = Σ_t r_t Δ_t,  dΔ_t = d(Δu)_t u_t + Σ_n r_t A,  dh_0 = exp(Δ_1 A) ⊙ g_1.                        (4)

_BLOCK_ELEMENTS = 1 << 19  # target size of one (T, b, n, e) block buffer: ~2 MB in float32, cache-sized
_LOG2_E = 1.4426950408889634  # exp(x) = exp2(x · log2 e); exp2 is about twice as fast as exp on AVX2 CPUs


def _block_length(batch: int, d_state: int, d_inner: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return max(1, chunk_size)
    return max(1, _BLOCK_ELEMENTS // max(1, batch * d_state * d_inner))


def _block_states(u: Tensor, delta: Tensor, At2: Tensor, B: Tensor, h: Tensor, dA: Tensor, H: Tensor) -> None:
    """Eq. (1) over one block, written into the buffers ``dA`` = exp(Δ A) and ``H`` = h_1..h_T (T, b, n, e).

    u, delta (T, b, e); At2 = Aᵀ·log2(e) (n, e); B (T, b, n); h (b, n, e) the state before the block.
    """
    torch.mul(delta.unsqueeze(2), At2, out=dA).exp2_()
    torch.mul(B.unsqueeze(-1), (delta * u).unsqueeze(2), out=H)
    prev = h
    for H_t, dA_t in zip(H.unbind(0), dA.unbind(0)):
        prev = H_t.addcmul_(dA_t, prev)


def _chunked_forward(
    u: Tensor, delta: Tensor, At: Tensor, B: Tensor, C: Tensor, h0: Tensor, block: int, keep_checkpoints: bool
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Eq. (1)-(2) without D, block by block; time-major. Returns y (l, b, e), h_l (b, n, e) and the states
    entering each block (the checkpoints of the backward) when ``keep_checkpoints``."""
    l, b, e = u.shape
    n = At.shape[0]
    At2 = At * _LOG2_E
    y = u.new_empty(l, b, e)
    dA_buf, H_buf = u.new_empty(2, min(block, l), b, n, e)  # reused by every block: no page faults per block
    checkpoints = []
    h = h0
    for s in range(0, l, block):
        T = min(block, l - s)
        dA, H = dA_buf[:T], H_buf[:T]
        if keep_checkpoints:
            checkpoints.append(h)
        _block_states(u[s:s + T], delta[s:s + T], At2, B[s:s + T], h, dA, H)
        torch.bmm(C[s:s + T].reshape(T * b, 1, n), H.view(T * b, n, e), out=y[s:s + T].view(T * b, 1, e))  # (2)
        h = H[-1].clone()
    return y, h, checkpoints


class _ChunkedSelectiveScan(torch.autograd.Function):
    """(u, Δ (l, b, e), Aᵀ (n, e), B, C (l, b, n), h_0 (b, n, e)) -> (y (l, b, e), h_l (b, n, e)):
    Eq. (1)-(2) without D."""

    @staticmethod
    def forward(ctx, u, delta, At, B, C, h0, block):
        y, h, checkpoints = _chunked_forward(u, delta, At, B, C, h0, block, keep_checkpoints=True)
        ctx.save_for_backward(u, delta, At, B, C, *checkpoints)
        ctx.block = block
        return y, h

    @staticmethod
    def backward(ctx, dy, dh):
        u, delta, At, B, C, *checkpoints = ctx.saved_tensors
        block = ctx.block
        l, b, e = u.shape
        n = At.shape[0]
        At2 = At * _LOG2_E
        dy = u.new_zeros(l, b, e) if dy is None else dy.contiguous()
        du, ddelta, dB, dC = torch.empty_like(u), torch.empty_like(delta), torch.empty_like(B), torch.empty_like(C)
        dAt = torch.zeros_like(At)
        dA_buf, H_buf, G_buf = u.new_empty(3, min(block, l), b, n, e)
        g = torch.zeros_like(checkpoints[0]) if dh is None else dh.contiguous()  # dL/dh at the end of the block
        for k in reversed(range(len(checkpoints))):
            s = k * block
            T = min(block, l - s)
            dA, H, G = dA_buf[:T], H_buf[:T], G_buf[:T]
            h = checkpoints[k]
            u_, d_, B_, C_, dy_ = u[s:s + T], delta[s:s + T], B[s:s + T], C[s:s + T], dy[s:s + T]
            _block_states(u_, d_, At2, B_, h, dA, H)
            torch.sum(torch.mul(H, dy_.unsqueeze(2), out=G), -1, out=dC[s:s + T])  # dC_t = h_t·dy_t
            torch.mul(C_.unsqueeze(-1), dy_.unsqueeze(2), out=G)  # C_t ⊗ dy_t, then Eq. (3) in place
            G_t, dA_t = G.unbind(0), dA.unbind(0)
            G_t[-1].add_(g)
            for t in range(T - 2, -1, -1):
                G_t[t].addcmul_(dA_t[t + 1], G_t[t + 1])
            g = dA_t[0] * G_t[0]  # dL/dh_0 of this block
            dDu = torch.bmm(B_.reshape(T * b, 1, n), G.view(T * b, n, e)).view(T, b, e)  # d(Δu)_t = g_t·B_t
            r = dA.mul_(G)
            torch.sum(torch.mul(G, (d_ * u_).unsqueeze(2), out=G), -1, out=dB[s:s + T])  # dB_t = g_t·(Δ_t u_t)
            # H is h_1..h_T; r_t = g_t exp(Δ_t A) h_{t-1} needs h_0..h_{T-1}
            r[1:].mul_(H[:-1])
            r[0].mul_(h)
            dAt += torch.mul(r, d_.unsqueeze(2), out=G).sum((0, 1))
            torch.addcmul(torch.mul(r, At, out=G).sum(2), dDu, u_, out=ddelta[s:s + T])
            torch.mul(dDu, d_, out=du[s:s + T])
        return du, ddelta, dAt, dB, dC, g, None


def selective_scan_fast(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False, initial_state: Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Blocked selective scan with a hand-written backward; same arguments and results as
    :func:`selective_scan_ref`, differentiable w.r.t. every input including ``initial_state``.

    ``chunk_size``: time steps T per block (None: sized so that a (T, b, n, e) buffer has ~512K elements).
    Extra memory is O(T·b·n·e + (l/T)·b·n·e), never O(l·b·n·e); without grad only the block buffers.
    """
    b, l, e = u.shape
    n = A.shape[-1]
    dtype = u.dtype
    delta = _discretisation_inputs(delta, delta_bias, delta_softplus)
    h0 = u.new_zeros(b, n, e) if initial_state is None else initial_state.to(dtype).transpose(1, 2).contiguous()
    if l == 0:
        return u.new_zeros(u.shape), h0.transpose(1, 2).contiguous()

    def time_major(x: Tensor) -> Tensor:
        return x.to(dtype).transpose(0, 1).contiguous()

    block = _block_length(b, n, e, chunk_size)
    args = (time_major(u), time_major(delta), A.to(dtype).t().contiguous(), time_major(B), time_major(C), h0)
    if torch.is_grad_enabled() and any(x.requires_grad for x in args):
        y, h = _ChunkedSelectiveScan.apply(*args, block)
    else:  # evaluation: no checkpoints, no graph
        y, h, _ = _chunked_forward(*args, block, keep_checkpoints=False)
    return _skip_and_gate(y.transpose(0, 1), u, D, z), h.transpose(1, 2).contiguous()


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    impl: str = "chunked",
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Dispatch to :func:`selective_scan_fast` (``impl="chunked"``), :func:`selective_scan_ref` (``"reference"``) or
    the Triton kernels of ``selective_scan_triton`` (``"triton"``: CUDA tensors, or CPU under ``TRITON_INTERPRET=1``;
    imported only then, so that triton stays optional). ``chunk_size``: time steps per block / per saved state.

    Half-precision inputs (bfloat16 / float16 autocast) are scanned in float32 with autocast off: y comes back in
    u's dtype, the final state stays float32 (a state carried over thousands of windows must not be rounded to 8
    mantissa bits at every boundary)."""
    if impl not in ("chunked", "reference", "triton"):
        raise ValueError(f"impl must be 'chunked', 'reference' or 'triton'; got {impl!r}")
    out_dtype = u.dtype
    dtype = torch.promote_types(u.dtype, torch.float32)
    u, delta, B, C, z = (None if t is None else t.to(dtype) for t in (u, delta, B, C, z))
    with torch.autocast(u.device.type, enabled=False):
        if impl == "chunked":
            y, h = selective_scan_fast(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, chunk_size)
        elif impl == "reference":
            y, h = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
        else:
            from .selective_scan_triton import selective_scan_triton

            y, h = selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                         chunk_size)
    return y.to(out_dtype), h
