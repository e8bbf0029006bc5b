"""Diagonal complex linear recurrence (the S5 scan), reference loop and chunked parallel scan.

    x_k = Λ̄_k ⊙ x_{k-1} + (B̄u)_k,      x_{-1} = initial_state                              (1)

References:
    [1] Smith, Warrington & Linderman, "Simplified State Space Layers for Sequence Modeling", ICLR 2023
        (S5): the recurrence (1) is computed with a parallel scan over the elements (Λ̄_k, (B̄u)_k) and the
        associative operator  (a_i, b_i) • (a_j, b_j) = (a_j a_i, a_j b_i + b_j).
    [2] Blelloch, "Prefix sums and their applications", 1990.

Glossary (code letter -> symbol):
    b   batch                   l   sequence length             p   state size (complex states)
    c   chunk length C          n   number of chunks
    lambda_bar  Λ̄ (diagonal state matrix, |Λ̄| < 1 for a stable system), (p,) or (b, l, p), complex
    bu          B̄u_k, the input already projected into the state space, (b, l, p), complex
    x           the state, (b, p) complex; xs = all states x_0 .. x_{l-1}, (b, l, p)

Both ops share the signature ``op(lambda_bar, bu, initial_state=None) -> (xs, final_state)``; gradients
flow into ``lambda_bar``, ``bu`` and ``initial_state``. ``diag_scan_ref`` is the sequential loop (the
oracle); ``diag_scan_fast`` is a chunked parallel scan:

* inside a chunk of length C the states started from zero are computed all at once —
  for a time-invariant Λ̄ (shape (p,)) as a causal Toeplitz product with the powers Λ̄^0 .. Λ̄^C,
      x_t = Σ_{s<=t} Λ̄^{t-s} (B̄u)_s,                                                        (2)
  for a time-varying Λ̄ with a Hillis-Steele log-depth inclusive scan of the operator above;
* the n chunk-start states then obey a recurrence of the same form (1), with Λ̄ replaced by the chunk's
  total decay Π Λ̄ and (B̄u) by the chunk's end state from zero, which is solved by calling the same scan
  recursively (depth log_C(l));
* every chunk's states are finally  x_t = (Π_{s<=t} Λ̄_s) ⊙ x_start + x_t^{zero-start}.               (3)

Only products of Λ̄ appear (never its inverse), so with |Λ̄| <= 1 no intermediate exceeds the magnitude of
the inputs: no overflow for any length, unlike the "factorised" form Λ̄^t · cumsum(Λ̄^{-s} (B̄u)_s).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["diag_scan_fast", "diag_scan_ref"]


def _check(lambda_bar: Tensor, bu: Tensor, initial_state: Tensor | None) -> None:
    if bu.dim() != 3:
        raise ValueError(f"bu must be (b, l, p); got shape {tuple(bu.shape)}")
    b, l, p = bu.shape
    if lambda_bar.shape not in ((p,), (b, l, p)):
        raise ValueError(f"lambda_bar must be (p,) or (b, l, p) = {(b, l, p)}; got {tuple(lambda_bar.shape)}")
    if initial_state is not None and initial_state.shape != (b, p):
        raise ValueError(f"initial_state must be (b, p) = {(b, p)}; got {tuple(initial_state.shape)}")


def diag_scan_ref(
    lambda_bar: Tensor, bu: Tensor, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Sequential loop of Eq. (1), the reference (runs in whatever precision it is given, e.g. complex128).

    Args:
        lambda_bar: Λ̄, (p,) time-invariant or (b, l, p) time-varying, complex.
        bu: B̄u, (b, l, p) complex.
        initial_state: x_{-1}, (b, p) complex; None = zeros.
    Returns:
        xs (b, l, p): the state after every step; final_state (b, p): x_{l-1} (the initial state if l == 0).
    """
    _check(lambda_bar, bu, initial_state)
    b, l, p = bu.shape
    x = bu.new_zeros(b, p) if initial_state is None else initial_state
    if l == 0:
        return bu.new_zeros(b, 0, p), x
    decays = [lambda_bar] * l if lambda_bar.dim() == 1 else lambda_bar.unbind(1)
    xs = []
    for a_t, bu_t in zip(decays, bu.unbind(1)):  # time-major unbind: backward stays linear in l
        x = a_t * x + bu_t
        xs.append(x)
    return torch.stack(xs, dim=1), x


def _hillis_steele(a: Tensor, bu: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan of the pairs (a_t, bu_t) along dim 1 in ceil(log2 c) steps.

    Args: a, bu: (m, c, p). Returns (A_t, X_t), (m, c, p): A_t = Π_{s<=t} a_s and X_t = Eq. (1) from zero.
    """
    c = a.shape[1]
    d = 1
    while d < c:
        bu = torch.cat([bu[:, :d], a[:, d:] * bu[:, :-d] + bu[:, d:]], dim=1)
        a = torch.cat([a[:, :d], a[:, d:] * a[:, :-d]], dim=1)
        d *= 2
    return a, bu


@functools.lru_cache(maxsize=32)
def _block_toeplitz_index(c: int, device: torch.device) -> Tensor:
    """(2c, 2c) indices into the table [Re Λ̄^0..c, Im Λ̄^0..c, −Im Λ̄^0..c, 0] that build the real block form
    [[Tr, −Ti], [Ti, Tr]] of the causal Toeplitz matrix T[t, s] = Λ̄^{t−s} (t >= s), 0 (t < s)."""
    t = torch.arange(c, device=device)
    lag = t[:, None] - t[None, :]
    zero = 3 * (c + 1)
    re, im, neg_im = lag, lag + (c + 1), lag + 2 * (c + 1)
    idx = torch.cat([torch.cat([re, neg_im], 1), torch.cat([im, re], 1)], 0)
    causal = (lag >= 0).repeat(2, 2)
    return torch.where(causal, idx, torch.full_like(idx, zero))


def _toeplitz_apply(powers: Tensor, u: Tensor) -> Tensor:
    """Eq. (2): x[b, n, t, p] = Σ_{s<=t} Λ̄_p^{t−s} u[b, n, s, p], in real arithmetic (complex bmm on CPU
    is a slow per-matrix loop): one real batched product over p with the block matrix [[Tr, −Ti], [Ti, Tr]].

    Args: powers (c+1, p) complex, Λ̄^0 .. Λ̄^c; u (b, n, c, p) complex. Returns (b, n, c, p) complex.
    """
    b, n, c, p = u.shape
    table = torch.cat([powers.real, powers.imag, -powers.imag, powers.real.new_zeros(1, p)]).T  # (p, 3c+4)
    block = table[:, _block_toeplitz_index(c, u.device)]  # (p, 2c, 2c)
    u_real = torch.view_as_real(u).permute(3, 4, 2, 0, 1).reshape(p, 2 * c, b * n)  # (p, [re|im] x s, b n)
    x_real = torch.bmm(block, u_real).view(p, 2, c, b, n).permute(3, 4, 2, 0, 1)  # (b, n, t, p, 2)
    return torch.view_as_complex(x_real.contiguous())


def diag_scan_fast(
    lambda_bar: Tensor, bu: Tensor, initial_state: Tensor | None = None, chunk_size: int = 64
) -> tuple[Tensor, Tensor]:
    """Chunked parallel scan of Eq. (1): Eq. (2) (or Hillis-Steele) inside chunks, Eq. (1) across chunks.

    Args:
        lambda_bar: Λ̄, (p,) time-invariant or (b, l, p) time-varying, complex, |Λ̄| <= 1 expected.
        bu: B̄u, (b, l, p) complex.
        initial_state: x_{-1}, (b, p) complex; None = zeros.
        chunk_size: C, the chunk length, at least 2 (work per token grows with C for a time-invariant Λ̄).
    Returns:
        xs (b, l, p) and final_state (b, p), equal to ``diag_scan_ref`` up to rounding.
    """
    _check(lambda_bar, bu, initial_state)
    b, l, p = bu.shape
    if l == 0:
        return bu.new_zeros(b, 0, p), bu.new_zeros(b, p) if initial_state is None else initial_state
    c = min(max(2, chunk_size), l)  # C >= 2, so the recursion over chunk starts shrinks geometrically
    n = -(-l // c)
    pad = n * c - l
    bu_c = F.pad(bu, (0, 0, 0, pad)).view(b, n, c, p)

    if lambda_bar.dim() == 1:
        # Powers Λ̄^0 .. Λ̄^c by a cumulative product (no log, so Λ̄ = 0 is harmless), then Eq. (2) as a
        # lower-triangular Toeplitz matrix product, batched over p.
        powers = torch.cat([torch.ones_like(lambda_bar)[None], torch.cumprod(lambda_bar.expand(c, p), dim=0)])
        x_zero = _toeplitz_apply(powers, bu_c)  # (b, n, c, p)
        decay_in = powers[1:]  # (c, p): Π_{s<=t} Λ̄ = Λ̄^{t+1}
        chunk_decay = powers[c]  # (p,)
    else:
        a_c = F.pad(lambda_bar, (0, 0, 0, pad), value=1.0).view(b * n, c, p)
        decay_in, x_zero = _hillis_steele(a_c, bu_c.reshape(b * n, c, p))
        decay_in, x_zero = decay_in.view(b, n, c, p), x_zero.view(b, n, c, p)
        chunk_decay = decay_in[:, :-1, -1]  # (b, n-1, p): total decay of chunks 0 .. n-2

    # Chunk-start states: x_start[0] = x_{-1}; x_start[j+1] = decay(chunk j) ⊙ x_start[j] + x_zero[j, end].
    if n == 1:
        starts = None if initial_state is None else initial_state[:, None]
    else:
        ends, _ = diag_scan_fast(chunk_decay, x_zero[:, :-1, -1], initial_state, chunk_size)
        first = bu.new_zeros(b, 1, p) if initial_state is None else initial_state[:, None]
        starts = torch.cat([first, ends], dim=1)  # (b, n, p)

    xs = x_zero if starts is None else x_zero + decay_in * starts[:, :, None]  # Eq. (3)
    xs = xs.reshape(b, n * c, p)[:, :l]
    return xs, xs[:, -1].contiguous()
