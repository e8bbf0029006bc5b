"""Gated linear attention (GLA): a sequential reference and the chunkwise form with secondary chunks.

References
    [1] S. Yang, B. Wang, Y. Shen, R. Panda, Y. Kim. "Gated Linear Attention Transformers with Hardware-Efficient
        Training." ICML 2024. arXiv:2312.06635. Eq. 3 (the recurrence), Sec. 4.2-4.3 (the chunkwise form and its
        secondary-level chunks, computed in log space for stability).
    [2] fla-org/flash-linear-attention, ``fla/ops/gla/chunk.py`` (``chunk_gla``): the Triton kernel that
        ``model.scan fla`` runs (``fla_kernels.py``), same layouts as here.

Glossary (code letter -> paper symbol)
    b  batch            l  sequence length       h  heads
    K  key dim per head (d_k)                    V  value dim per head (d_v)
    c  chunk index      C  chunk length           s  sub-chunk index (secondary chunks of length Cs)
    q, k  (b, l, h, K)  queries and keys          v  (b, l, h, V) values
    g     (b, l, h, K)  log of the data-dependent forget gates alpha_t = exp(g_t) in (0, 1]^K, g <= 0
    S     (b, h, K, V)  the state, key-major (the paper's S_t with rows over keys, [1] Eq. 3)
    scale               query scale of the readout (the mixer passes K^-1/2, fla's default)

The recurrence ([1] Eq. 3: S_t = (alpha_t^T 1) ⊙ S_{t-1} + k_t^T v_t):
    S_t = diag(alpha_t) S_{t-1} + k_t v_t^T,      o_t = scale * S_t^T q_t

Chunkwise ([1] Sec. 4.2). With γ_i = g_1 + ... + g_i (per key channel) inside a chunk and S_0 entering it:
    o_i = scale [(q_i ⊙ e^{γ_i})^T S_0 + sum_{j<=i} (sum_d q_id k_jd e^{γ_id - γ_jd}) v_j]
    S_C = diag(e^{γ_C}) S_0 + sum_j (k_j ⊙ e^{γ_C - γ_j}) v_j^T
The intra-chunk scores need a per-channel exponent per pair (i, j). [1] Sec. 4.3 computes them in two levels:
between sub-chunks s' < s, relative to the first position r of sub-chunk s, the scores are a matmul of
q_i ⊙ e^{γ_i - γ_r} and k_j ⊙ e^{γ_r - γ_j} (both exponents <= 0); inside a sub-chunk they are formed pair by pair
in log space. Every exponent here is a difference γ_a - γ_b with a at or after b: nothing overflows however small
alpha is (a plain e^{γ_i} * e^{-γ_j} factorisation over the whole chunk overflows there).

Both ops: ``op(q, k, v, g, scale=1, initial_state=None) -> (o, final_state)``, o (b, l, h, V) in v's dtype,
final_state (b, h, K, V) in the compute dtype (at least float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EVAL_BLOCK_CHUNKS = 16
"""Chunks per block without gradients (constant forward memory in the sequence length)."""

SUB_CHUNK = 8
"""Length of the secondary chunks ([1] Sec. 4.3); a chunk that is not a multiple of it is one sub-chunk."""


def _compute_dtype(v: Tensor) -> torch.dtype:
    return torch.promote_types(v.dtype, torch.float32)


def _check(q: Tensor, k: Tensor, v: Tensor, g: Tensor) -> tuple[int, int, int, int, int]:
    b, l, h, dk = q.shape
    if k.shape != q.shape or g.shape != q.shape or v.shape[:3] != (b, l, h):
        raise ValueError(
            f"gla: expected q = k = g (b,l,h,K), v (b,l,h,V); got q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}, g {tuple(g.shape)}"
        )
    return b, l, h, dk, v.shape[-1]


def gla_ref(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float = 1.0, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """GLA one token at a time: S_t = diag(e^{g_t}) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t ([1] Eq. 3).

    q, k, g (b, l, h, K), v (b, l, h, V), initial_state (b, h, K, V) or None -> o (b, l, h, V),
    final_state (b, h, K, V). The oracle of ``gla_chunked`` and of fla's kernel; exact in float64.
    """
    b, _, h, dk, dv = _check(q, k, v, g)
    dtype = _compute_dtype(v)
    state = v.new_zeros(b, h, dk, dv, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    outs = []
    for q_t, k_t, v_t, g_t in zip(*(t.to(dtype).unbind(1) for t in (q, k, v, g))):
        state = g_t.exp()[..., None] * state + k_t[..., :, None] * v_t[..., None, :]
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", state, q_t))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(b, 0, h, dv, dtype=dtype)
    return o.to(v.dtype), state


def _intra_scores(q: Tensor, k: Tensor, gamma: Tensor, sub: int) -> Tensor:
    """Scores A_ij = sum_d q_id k_jd e^{γ_id - γ_jd} for j <= i (0 above), two levels ([1] Sec. 4.3).

    q, k, gamma (..., C, K) -> (..., C, C). ``sub`` divides C.
    """
    C, dk = q.shape[-2:]
    ns = C // sub
    lead = q.shape[:-2]
    qs, ks, gs = (t.reshape(*lead, ns, sub, dk) for t in (q, k, gamma))
    # inside a sub-chunk: the per-channel exponent of every pair, masked before the exponential
    diff = gs[..., :, None, :] - gs[..., None, :, :]                           # (..., s, i, j, K)
    upper = torch.ones(sub, sub, dtype=torch.bool, device=q.device).triu(1)
    diff = diff.masked_fill(upper[..., None], float("-inf"))
    diag = torch.einsum("...sid,...sjd,...sijd->...sij", qs, ks, diff.exp())  # (..., s, sub, sub)
    scores = q.new_zeros(*lead, C, C)
    idx = torch.arange(ns, device=q.device)
    scores.view(*lead, ns, sub, ns, sub)[..., idx, :, idx, :] = diag.movedim(-3, 0)
    if ns > 1:
        # between sub-chunks, relative to r = the first position of the target sub-chunk s
        ref = gs[..., :, :1, :]                                               # γ_r (..., s, 1, K)
        q_rel = qs * (gs - ref).exp()                                         # e^{γ_i - γ_r} <= 1
        before = torch.arange(C, device=q.device)[None, :] < (idx * sub)[:, None]   # j before sub-chunk s (s, C)
        k_exp = (ref - gamma[..., None, :, :]).masked_fill(~before[..., None], float("-inf"))  # (..., s, C, K)
        k_rel = k[..., None, :, :] * k_exp.exp()                              # e^{γ_r - γ_j} <= 1 for j < r
        inter = q_rel @ k_rel.transpose(-1, -2)                               # (..., s, sub, C)
        scores = scores + inter.reshape(*lead, C, C)
    return scores


def _chunks(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor, scale: float, sub: int):
    """Whole chunks (b, h, c, C, ·) from ``state`` (b, h, K, V) -> outputs (b, h, c, C, V), the final state."""
    gamma = g.cumsum(dim=-2)                                                  # (b, h, c, C, K)
    scores = _intra_scores(q, k, gamma, sub) * scale
    intra = scores @ v                                                        # (b, h, c, C, V)
    q_decayed = q * gamma.exp() * scale
    k_decayed = k * (gamma[..., -1:, :] - gamma).exp()
    chunk_decay = gamma[..., -1, :].exp()                                     # (b, h, c, K)
    kv = k_decayed.transpose(-1, -2) @ v                                      # (b, h, c, K, V)
    entering = []
    # only the state recurrence runs chunk by chunk; the readout of the entering states is one batched product.
    # unbind, not [:, :, c]: the backward of an index builds a zero tensor of the whole input per chunk
    for a_c, kv_c in zip(chunk_decay.unbind(2), kv.unbind(2)):
        entering.append(state)
        state = torch.addcmul(kv_c, a_c[..., None], state)
    return intra + q_decayed @ torch.stack(entering, dim=2), state


def gla_chunked(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float = 1.0, initial_state: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """GLA in the chunkwise form with secondary chunks ([1] Sec. 4.2-4.3). Same recurrence, signature and shapes
    as ``gla_ref`` (plus ``chunk_size``); differentiable w.r.t. every input and ``initial_state``.

    A tail shorter than a chunk is padded with k = 0 and g = 0 (no write, no decay): the state passes through.
    Without gradients the chunks are processed ``EVAL_BLOCK_CHUNKS`` at a time.
    """
    b, l, h, dk, dv = _check(q, k, v, g)
    dtype = _compute_dtype(v)
    state = v.new_zeros(b, h, dk, dv, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    if l == 0:
        return v.new_zeros(b, 0, h, dv), state
    size = min(chunk_size, l)
    pad = (-l) % size
    nc = (l + pad) // size
    sub = SUB_CHUNK if size % SUB_CHUNK == 0 else size

    def chunked(t: Tensor) -> Tensor:  # (b, l, h, x) -> (b, h, c, C, x), zero-padded, in the compute dtype
        t = F.pad(t.to(dtype), (0, 0, 0, 0, 0, pad))
        return t.reshape(b, nc, size, h, t.shape[-1]).movedim(3, 1)

    qc, kc, vc, gc = (chunked(t) for t in (q, k, v, g))
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, g, initial_state)
    )
    block = nc if needs_grad else EVAL_BLOCK_CHUNKS
    outs = []
    for c0 in range(0, nc, block):
        s = slice(c0, c0 + block)
        o, state = _chunks(qc[:, :, s], kc[:, :, s], vc[:, :, s], gc[:, :, s], state, scale, sub)
        outs.append(o)
    o = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    o = o.movedim(1, 3).reshape(b, nc * size, h, dv)[:, :l]
    return o.to(v.dtype), state.contiguous()
