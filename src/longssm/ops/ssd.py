"""Structured state space duality (SSD): the scan of Mamba-2, as a sequential reference and a chunked algorithm.

References
    [1] T. Dao, A. Gu. "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured
        State Space Duality." ICML 2024. arXiv:2405.21060. Section 6 (the SSD algorithm), Listing 1.
    [2] state-spaces/mamba, ``mamba_ssm/ops/triton/ssd_combined.py`` (its fused kernel is ``model.scan mamba_ssm``,
        ``ssd_mamba_ssm.py``; this module is ours alone).

Glossary (code letter -> paper symbol)
    b  batch                      l  sequence length (T in [1])       h  heads
    p  head dim (P)               n  state size (N)                    g  groups of B/C (heads h share B, C of
    r  heads per group, h = g r   c  chunk index                          group h // r)
    q, i, j  position inside a chunk of length Q (i: target, j: source)
    Δ  dt (b, l, h): step size, already through softplus(+ bias)
    A  (h,): negative scalar per head (the scalar-times-identity A of SSD, [1] Sec. 3.4)
    B, C  (b, l, g, n): input / output projections of the state
    D  (h,): skip connection y += D x
    a  = Δ A, the log of the per-step decay (always <= 0)

The recurrence ([1] Eq. 2 with the SSD restriction A_t = a_t I), per head and for every p:
    h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_t^T          h_t: (p, n)
    y_t = h_t C_t + D x_t

Both ops share one signature ``op(x, dt, A, B, C, D=None, initial_state=None) -> (y, final_state)`` with
x (b, l, h, p), dt (b, l, h), A (h,), B and C (b, l, g, n), D (h,) or None, initial_state (b, h, p, n) or None
(zeros); y (b, l, h, p) in x's dtype, final_state (b, h, p, n) in the compute dtype (at least float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Chunks per block when no gradient is needed: the quadratic intra-chunk tensors then exist for one block at a
# time only, so forward-only memory is O(EVAL_BLOCK_CHUNKS * chunk_size) in the sequence length.
EVAL_BLOCK_CHUNKS = 16


def _compute_dtype(x: Tensor) -> torch.dtype:
    """Half precision inputs are scanned in float32 (decays and cumulative sums need it); float64 stays."""
    return torch.promote_types(x.dtype, torch.float32)


def _check_shapes(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[int, int, int, int, int, int]:
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    if dt.shape != (b, l, h) or A.shape != (h,) or B.shape != (b, l, g, n) or C.shape != B.shape:
        raise ValueError(
            f"ssd: expected x (b,l,h,p), dt (b,l,h), A (h,), B = C (b,l,g,n); got x {tuple(x.shape)}, "
            f"dt {tuple(dt.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    if h % g:
        raise ValueError(f"ssd: heads h={h} must be divisible by groups g={g}")
    return b, l, h, p, g, n


def _start_state(initial_state: Tensor | None, x: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """h_0 (b, h, p, n) in the compute dtype: ``initial_state``, or zeros when it is None. x (b, l, h, p)."""
    b, _, h, p = x.shape
    return x.new_zeros(b, h, p, n, dtype=dtype) if initial_state is None else initial_state.to(dtype)


def _add_skip(y: Tensor, x: Tensor, D: Tensor | None) -> Tensor:
    """y + D x (D per head), returned in x's dtype: the last step of both ops. y, x (b, l, h, p); D (h,)."""
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * x.to(y.dtype)
    return y.to(x.dtype)


def ssd_ref(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Sequential SSD recurrence, one step per token: the oracle for ``ssd_chunked``.

    h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_t^T,  y_t = h_t C_t + D x_t   ([1] Eq. 2, A_t = a_t I).

    Shapes: x (b, l, h, p), dt (b, l, h), A (h,), B, C (b, l, g, n), D (h,), initial_state (b, h, p, n)
    -> y (b, l, h, p), final_state (b, h, p, n). Exact in float64; time-major loop (``unbind``) so that the
    backward pass stays linear in l.
    """
    b, _, h, p, g, n = _check_shapes(x, dt, A, B, C)
    dtype = _compute_dtype(x)
    r = h // g
    state = _start_state(initial_state, x, n, dtype)
    A = A.to(dtype)
    # heads of one group read the same B, C: expand (b, l, g, n) -> (b, l, h, n)
    B_h = B.to(dtype).repeat_interleave(r, dim=2)
    C_h = C.to(dtype).repeat_interleave(r, dim=2)
    ys = []
    for x_t, dt_t, B_t, C_t in zip(x.to(dtype).unbind(1), dt.to(dtype).unbind(1), B_h.unbind(1), C_h.unbind(1)):
        decay = torch.exp(dt_t * A)                                   # (b, h)
        state = decay[..., None, None] * state + (dt_t[..., None] * x_t)[..., None] * B_t[:, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C_t))
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p, dtype=dtype)
    return _add_skip(y, x, D), state


def _segsum(a: Tensor) -> Tensor:
    """Segment sums of log-decays: out[..., i, j] = a_{j+1} + ... + a_i for i >= j, -inf above the diagonal.

    a (..., q) -> (..., q, q) in a's dtype. Entries on and below the diagonal are sums of a <= 0, so exp(out)
    is in [0, 1] and nothing overflows ([1] Sec. 6, "segsum"). Computed as cumsum_i - cumsum_j like the
    official kernel [2], but with the cumulative sum in float64: in float32 the difference of two sums of
    size ~1e4 loses ~1e-3 of a small segment (dA was off by 3e-3 at Δ|A| ~ 100); a masked cumulative sum
    is as exact but 2-3x slower on CPU.
    """
    q = a.shape[-1]
    cum = a.to(torch.float64).cumsum(dim=-1)
    upper = torch.ones(q, q, dtype=torch.bool, device=a.device).triu(1)
    return (cum[..., :, None] - cum[..., None, :]).to(a.dtype).masked_fill(upper, float("-inf"))


def _ssd_block(xdt: Tensor, a: Tensor, B: Tensor, C: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """SSD over whole chunks of one block ([1] Sec. 6, the four steps of Listing 1), starting from ``state``.

    xdt = Δ x (b, c, q, g, r, p), a = Δ A (b, c, q, g, r), B, C (b, c, q, g, n), state (b, g, r, p, n)
    -> y without the D term (b, c, q, g, r, p), final state (b, g, r, p, n).
    """
    a = a.permute(0, 1, 3, 4, 2)                                     # (b, c, g, r, q)
    seg = _segsum(a)                                                 # (b, c, g, r, q, q)
    # 1. diagonal blocks: within a chunk SSD is masked attention, y_i = sum_{j<=i} (C_i.B_j) e^{seg_ij} Δ_j x_j
    scores = torch.einsum("bcign,bcjgn->bcgij", C, B)               # (b, c, g, q, q), shared by the r heads
    y = torch.einsum("bcgrij,bcjgrp->bcigrp", scores[:, :, :, None] * seg.exp(), xdt)
    # 2. state of each chunk started from zero: S_c = sum_j e^{a_{j+1}+...+a_Q} Δ_j x_j B_j^T
    decay_to_end = seg[..., -1, :].exp()                             # (b, c, g, r, q)
    chunk_states = torch.einsum("bcjgn,bcjgrp->bcgrpn", B, xdt * decay_to_end.permute(0, 1, 4, 2, 3)[..., None])
    # 3. recurrence over chunks: H_{c+1} = e^{a summed over chunk c} H_c + S_c, H_0 = the initial state
    #    (a loop: O(c) and a few small ops, where the (c+1) x (c+1) segsum matrix form was slower at small c)
    chunk_decay = a.sum(dim=-1).exp()[..., None, None]              # (b, c, g, r, 1, 1)
    entering = []
    for c in range(chunk_states.shape[1]):
        entering.append(state)
        state = chunk_decay[:, c] * state + chunk_states[:, c]
    states_in = torch.stack(entering, dim=1)                        # (b, c, g, r, p, n)
    # 4. off-diagonal blocks: the state entering a chunk, decayed to position i and read out by C_i
    decay_from_start = a.cumsum(dim=-1).exp()                        # (b, c, g, r, q)
    y_off = torch.einsum("bcign,bcgrpn->bcigrp", C, states_in)
    y = y + y_off * decay_from_start.permute(0, 1, 4, 2, 3)[..., None]
    return y, state


def decayed_scan(xw: Tensor, a: Tensor, B: Tensor, C: Tensor, state: Tensor, chunk_size: int,
                 needs_grad: bool) -> tuple[Tensor, Tensor]:
    """The chunked algorithm of ``ssd_chunked`` for any input weights and log-decays (Mamba-3 reuses it):

        h_t = exp(a_t) h_{t-1} + xw_t B_t^T,   y_t = h_t C_t

    xw (b, l, h, p) (SSD: Δ x), a (b, l, h) <= 0 (SSD: Δ A), B, C (b, l, g, n), state (b, h, p, n), all in the
    compute dtype, l >= 1 -> y (b, l, h, p), final state (b, h, p, n). A tail shorter than a chunk is padded with
    a = 0, xw = 0 (decay 1, no input), so the final state is the state after the last real token. Without
    ``needs_grad`` the chunks are processed in blocks of ``EVAL_BLOCK_CHUNKS``, carrying the state (memory
    constant in l)."""
    b, l, h, p = xw.shape
    g, n = B.shape[-2:]
    r = h // g
    q = min(chunk_size, l)
    pad = (-l) % q
    xw, a, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (xw, a, B, C))
    nc = (l + pad) // q
    xw = xw.reshape(b, nc, q, g, r, p)
    a = a.reshape(b, nc, q, g, r)
    B, C = B.reshape(b, nc, q, g, n), C.reshape(b, nc, q, g, n)
    state = state.reshape(b, g, r, p, n)
    block = nc if needs_grad else EVAL_BLOCK_CHUNKS
    ys = []
    for c0 in range(0, nc, block):
        s = slice(c0, c0 + block)
        y_blk, state = _ssd_block(xw[:, s], a[:, s], B[:, s], C[:, s], state)
        ys.append(y_blk)
    y = torch.cat(ys, dim=1) if len(ys) > 1 else ys[0]
    return y.reshape(b, nc * q, h, p)[:, :l], state.reshape(b, h, p, n).contiguous()


def ssd_chunked(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    initial_state: Tensor | None = None, chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Chunked SSD ([1] Sec. 6): quadratic (attention-like) inside chunks, linear recurrence across chunks.

    Same recurrence, signature and shapes as ``ssd_ref`` (plus ``chunk_size``):
    x (b, l, h, p), dt (b, l, h), A (h,), B, C (b, l, g, n), D (h,), initial_state (b, h, p, n)
    -> y (b, l, h, p), final_state (b, h, p, n). Differentiable w.r.t. all inputs and ``initial_state``.

    Every exponent is a segment sum of a = Δ A <= 0, so nothing overflows however long the decays are.
    A tail shorter than a chunk is padded with Δ = 0 (decay 1, no input): the state passes through unchanged,
    so the final state is the state after the last real token. Without gradients the sequence is processed
    in blocks of ``EVAL_BLOCK_CHUNKS`` chunks, carrying the state, so the quadratic intermediates take constant
    memory in l.
    """
    b, l, h, p, _, n = _check_shapes(x, dt, A, B, C)
    dtype = _compute_dtype(x)
    state = _start_state(initial_state, x, n, dtype)
    if l == 0:
        return x.new_zeros(b, 0, h, p), state
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, A, B, C, D, initial_state)
    )
    dt = dt.to(dtype)
    y, state = decayed_scan(x.to(dtype) * dt[..., None], dt * A.to(dtype), B.to(dtype), C.to(dtype), state,
                            chunk_size, needs_grad)
    return _add_skip(y, x, D), state
