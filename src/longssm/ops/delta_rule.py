"""The (gated) delta rule of DeltaNet and Gated DeltaNet: a sequential reference and the chunked WY / UT form.

References
    [1] S. Yang, B. Wang, Y. Zhang, Y. Shen, Y. Kim. "Parallelizing Linear Transformers with the Delta Rule over
        Sequence Length." NeurIPS 2024. arXiv:2406.06484. Eq. 1 (the delta rule), Sec. 3.2 (the WY representation
        and the chunkwise form), Eq. 8-9 (the UT transform).
    [2] S. Yang, J. Kautz, A. Hatamizadeh. "Gated Delta Networks: Improving Mamba2 with Delta Rule." ICLR 2025.
        arXiv:2412.06464. Eq. 10 (the gated delta rule), Sec. 3.3 (its chunkwise form, the decay-weighted UT).
    [3] fla-org/flash-linear-attention, ``fla/ops/gated_delta_rule``, ``fla/ops/delta_rule``: the Triton kernels
        that ``model.scan fla`` runs (``fla_kernels.py``); their layouts are ours (q, k (b, l, h, K), state
        (b, h, K, V)), so the mapping is the identity.

Glossary (code letter -> paper symbol)
    b  batch            l  sequence length       h  heads
    K  key / query dim per head (d_k)             V  value dim per head (d_v)
    c  chunk index      C  chunk length            i, j  positions inside a chunk (i: target, j: source)
    q, k  (b, l, h, K)  queries and keys; the mixers L2-normalise them ([1] Sec. 3.1), the ops do not
    v     (b, l, h, V)  values
    β     (b, l, h)     the writing strength beta_t in (0, 1)
    g     (b, l, h)     the log of the decay alpha_t = exp(g_t) <= 1 (Gated DeltaNet); None = 0 (DeltaNet)
    S     (b, h, K, V)  the state, stored key-major as fla does: the paper's S_t is our S_t^T
    scale               the query scale of the readout (the mixers pass K^-1/2, fla's default)

The recurrence ([2] Eq. 10, transposed to the key-major layout; g = 0 gives [1] Eq. 1):
    S_t = alpha_t (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T
    o_t = scale * S_t^T q_t

The chunkwise form ([1] Sec. 3.2, [2] Sec. 3.3). Inside a chunk with cumulative log-decays γ_i = g_1 + ... + g_i
and the state S_0 entering it, the state after i steps is S_i = e^{γ_i} S_0 + sum_{j<=i} e^{γ_i - γ_j} k_j u_j^T
with the "new values" u_j (the WY representation). They solve a unit lower-triangular system (the UT transform):
    (I + A) U = diag(β) V - diag(β e^γ) K S_0,      A_ij = β_i e^{γ_i - γ_j} k_i^T k_j   (j < i, 0 otherwise)
so U = Ũ - W S_0 with Ũ = T diag(β) V and W = T diag(β e^γ) K, T = (I + A)^{-1}; then
    O = scale [diag(e^γ) Q S_0 + (Q K^T ⊙ e^{γ_i - γ_j} ⊙ [j <= i]) U]
    S_C = e^{γ_C} S_0 + (diag(e^{γ_C - γ}) K)^T U
Every exponent is a difference γ_i - γ_j with i >= j (or γ_i itself), a sum of g <= 0: nothing overflows, however
strong the decay; pairs above the diagonal are masked to -inf before the exponential.

Both ops share ``op(q, k, v, beta, g=None, scale=1, initial_state=None) -> (o, final_state)``: o (b, l, h, V) in
v's dtype, final_state (b, h, K, V) in the compute dtype (at least float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EVAL_BLOCK_CHUNKS = 16
"""Chunks per block when no gradient is needed: the per-chunk matrices then exist for one block at a time, so
forward-only memory does not grow with the sequence length."""


def _compute_dtype(v: Tensor) -> torch.dtype:
    return torch.promote_types(v.dtype, torch.float32)


def _check(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None) -> tuple[int, int, int, int, int]:
    b, l, h, dk = q.shape
    dv = v.shape[-1]
    if k.shape != q.shape or v.shape[:3] != (b, l, h) or beta.shape != (b, l, h) or (
        g is not None and g.shape != (b, l, h)
    ):
        raise ValueError(
            f"delta rule: expected q = k (b,l,h,K), v (b,l,h,V), beta = g (b,l,h); got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}, beta {tuple(beta.shape)}, "
            f"g {None if g is None else tuple(g.shape)}"
        )
    return b, l, h, dk, dv


def _start_state(initial_state: Tensor | None, b: int, h: int, dk: int, dv: int, like: Tensor,
                 dtype: torch.dtype) -> Tensor:
    if initial_state is None:
        return like.new_zeros(b, h, dk, dv, dtype=dtype)
    return initial_state.to(dtype)


def delta_rule_ref(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None, scale: float = 1.0,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The gated delta rule one token at a time: the oracle of ``delta_rule_chunked`` and of fla's kernels.

    S_t = e^{g_t} (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T,  o_t = scale S_t^T q_t   ([2] Eq. 10; g None = 0).

    q, k (b, l, h, K), v (b, l, h, V), beta (b, l, h), g (b, l, h) or None, initial_state (b, h, K, V) or None
    -> o (b, l, h, V), final_state (b, h, K, V). Exact in float64.
    """
    b, l, h, dk, dv = _check(q, k, v, beta, g)
    dtype = _compute_dtype(v)
    state = _start_state(initial_state, b, h, dk, dv, v, dtype)
    qs, ks, vs, bs = (t.to(dtype).unbind(1) for t in (q, k, v, beta))
    gs = g.to(dtype).unbind(1) if g is not None else [None] * l
    outs = []
    for q_t, k_t, v_t, b_t, g_t in zip(qs, ks, vs, bs, gs):
        if g_t is not None:
            state = state * g_t.exp()[..., None, None]
        u_t = b_t[..., None] * (v_t - torch.einsum("bhkv,bhk->bhv", state, k_t))   # the new value (b, h, V)
        state = state + k_t[..., :, None] * u_t[..., None, :]
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", state, q_t))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(b, 0, h, dv, dtype=dtype)
    return o.to(v.dtype), state


def _chunk_terms(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, gamma: Tensor, scale: float):
    """The parts of every chunk that do not depend on the entering state, for all chunks at once.

    q, k (b, h, c, C, K), v (b, h, c, C, V), beta, gamma (b, h, c, C) (γ: cumulative log-decay inside the chunk)
    -> W (b, h, c, C, K), Ũ (b, h, c, C, V), the masked intra-chunk scores P (b, h, c, C, C) (scale included),
    the query readout e^γ Q scale (b, h, c, C, K) and the decayed keys e^{γ_C - γ} K (b, h, c, C, K).
    """
    C = q.shape[-2]
    diff = gamma[..., :, None] - gamma[..., None, :]                           # γ_i - γ_j (b, h, c, C, C)
    upper = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)
    decay = diff.masked_fill(upper, float("-inf")).exp()                       # e^{γ_i - γ_j} [j <= i]
    kk = k @ k.transpose(-1, -2)                                               # k_i^T k_j
    strict = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    A = (beta[..., :, None] * kk * decay).masked_fill(~strict, 0.0)
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    rhs = torch.cat([beta[..., None] * v, (beta * gamma.exp())[..., None] * k], dim=-1)
    sol = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
    u_tilde, w = sol.split([v.shape[-1], k.shape[-1]], dim=-1)
    scores = (q @ k.transpose(-1, -2)) * decay * scale                         # (b, h, c, C, C), zero above diag
    q_decayed = q * (gamma.exp() * scale)[..., None]
    k_decayed = k * (gamma[..., -1:] - gamma).exp()[..., None]
    return w, u_tilde, scores, q_decayed, k_decayed


def _chunks(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, state: Tensor, scale: float):
    """Whole chunks (b, h, c, C, ·) from ``state`` (b, h, K, V): the outputs (b, h, c, C, V), the final state."""
    gamma = g.cumsum(dim=-1)
    w, u_tilde, scores, q_decayed, k_decayed = _chunk_terms(q, k, v, beta, gamma, scale)
    chunk_decay = gamma[..., -1].exp()                                         # e^{γ_C} (b, h, c)
    b, h = q.shape[:2]
    entering, new_values = [], []
    # only what the next state needs runs chunk by chunk, as fused batched products over b h; the outputs are one
    # batched product after the loop. unbind, not [:, c]: an index's backward builds a zero tensor per chunk
    flat = (t.flatten(0, 1).unbind(1) for t in (u_tilde, w, chunk_decay, k_decayed.transpose(-1, -2)))
    state = state.flatten(0, 1)                                                # (b h, K, V)
    for u_c, w_c, a_c, kt_c in zip(*flat):
        entering.append(state)
        u = torch.baddbmm(u_c, w_c, state, alpha=-1)                           # U = Ũ - W S_0   (b h, C, V)
        new_values.append(u)
        state = torch.baddbmm(state * a_c[:, None, None], kt_c, u)             # e^{γ_C} S_0 + K̃^T U
    states_in = torch.stack(entering, dim=1).unflatten(0, (b, h))              # (b, h, c, K, V)
    u = torch.stack(new_values, dim=1).unflatten(0, (b, h))                    # (b, h, c, C, V)
    return q_decayed @ states_in + scores @ u, state.unflatten(0, (b, h))


def delta_rule_chunked(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None, scale: float = 1.0,
    initial_state: Tensor | None = None, chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """The gated delta rule in the chunkwise WY / UT form ([1] Sec. 3.2, [2] Sec. 3.3): quadratic inside chunks
    of ``chunk_size`` tokens, one state update per chunk. Same recurrence, signature and shapes as
    ``delta_rule_ref``; differentiable w.r.t. every input and ``initial_state``.

    A tail shorter than a chunk is padded with β = 0 and g = 0 (no write, no decay), so the state passes through
    the padding unchanged. Without gradients the chunks are processed ``EVAL_BLOCK_CHUNKS`` at a time.
    """
    b, l, h, dk, dv = _check(q, k, v, beta, g)
    dtype = _compute_dtype(v)
    state = _start_state(initial_state, b, h, dk, dv, v, dtype)
    if l == 0:
        return v.new_zeros(b, 0, h, dv), state
    size = min(chunk_size, l)
    pad = (-l) % size
    nc = (l + pad) // size
    g = torch.zeros_like(beta) if g is None else g

    def chunked(t: Tensor) -> Tensor:  # (b, l, h, ...) -> (b, h, c, C, ...) in the compute dtype, zero-padded
        t = F.pad(t.to(dtype), (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(b, nc, size, h, *t.shape[3:]).movedim(3, 1)

    qc, kc, vc, bc, gc = (chunked(t) for t in (q, k, v, beta, g))
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, beta, g, initial_state)
    )
    block = nc if needs_grad else EVAL_BLOCK_CHUNKS
    outs = []
    for c0 in range(0, nc, block):
        s = slice(c0, c0 + block)
        o, state = _chunks(qc[:, :, s], kc[:, :, s], vc[:, :, s], bc[:, :, s], gc[:, :, s], state, scale)
        outs.append(o)
    o = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]                 # (b, h, c, C, V)
    o = o.movedim(1, 3).reshape(b, nc * size, h, dv)[:, :l]
    return o.to(v.dtype), state.contiguous()
