"""Effective Remembrance (Buitrago Ruiz & Gu [1]): how much does the model's prediction still depend on old tokens?

References
    [1] Buitrago Ruiz & Gu, "Understanding and Improving Length Generalization in Recurrent Models", 2025,
        arXiv:2507.02782, Sec. 3 (Effective Remembrance).

Glossary
    T  context length (one evaluation sequence x[0:T])      t  start of the truncated context, 0 ≤ t < T
    q(· | x[a:T])  the next-token distribution after x[a:T], run from a zero state     V  vocabulary
    m  number of grid points t                              g  sequences per batch

    EffRem_T(t) = TV( q(·|x[0:T]), q(·|x[t:T]) ),    TV(q, q') = ½ Σ_v |q(v) − q'(v)|         (1)

averaged over sequences, for t on a grid log-spaced from both ends: 0, 1, 2, 4, ..., and T − 1, T − 2, T − 4, ...
EffRem_T(0) = 0; a model that has forgotten everything before t gives EffRem_T(t') = 0 for all t' ≤ t; a model
with no memory at all gives 0 everywhere (the last token is always in the context).

Cost. One forward of T − t tokens per grid point per sequence: Σ_t (T − t) ≈ T · (log2(T) + 2) tokens per
sequence (T = 4096: ≈ 57k tokens; T = 32768: ≈ 524k tokens), i.e. ~log2 T times the cost of one perplexity
pass; the points near T (short kept contexts) cost almost nothing.

Batching. The grid points of g sequences are rows of one batch (row j·g + s = sequence s truncated at t_j).
All rows walk the same time axis in segments whose boundaries include every t_j; the rows of t_j join the
batch, from a zero state, when the walk reaches t_j, so every row is an exact chunked recurrence over x[t_j:T]
and no token before t_j is ever fed to it. Rows × segment length ≤ ``tokens_per_forward`` bounds memory.

Several processes (``shard``): each runs its part of the sequences and puts its EffRem values in their columns
of an (m, n) table of zeros; the tables are summed over the processes, so every process averages the same values.

Registers the metric ``effective_remembrance``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..models.base import State, concat_states
from ..runtime.distributed import ALONE, Shard
from ..runtime.feed import feed, segments
from .registry import MetricResult, register_metric

if TYPE_CHECKING:
    from .context import EvalContext

DEFAULT_EFFREM_LENGTH = 2048
"""T when ``EvalConfig.effrem_length`` is not set: min(longest evaluation length, 2048)."""


def effrem_grid(T: int) -> list[int]:
    """Log-spaced from both ends: 0, 1, 2, 4, ..., 2^k < T, and T − 2^k (kept context 2^k = 1, 2, 4, ...)."""
    powers = [2**k for k in range(int(math.log2(max(T, 1))) + 1) if 2**k < T]
    grid = {0} | set(powers) | {T - p for p in powers} | {T - 1}
    return sorted(g for g in grid if 0 <= g < T)


def tv_distance(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """½ Σ_v |softmax(a) − softmax(b)| over the last dimension, in float64: (..., V) × (..., V) -> (...)."""
    p, q = torch.softmax(logits_a.double(), -1), torch.softmax(logits_b.double(), -1)
    return 0.5 * (p - q).abs().sum(-1)


@torch.no_grad()
def last_logits_truncated(
    model: torch.nn.Module,
    seqs: Tensor,
    ts: list[int],
    chunk: int = 1024,
    tokens_per_forward: int = 4096,
    device: torch.device | str = "cpu",
    progress=None,
) -> Tensor:
    """Logits after x[t:T] for every t in ``ts`` (sorted, t < T) and every row of ``seqs`` (g, T): (m, g, V).

    The batched walk of the module docstring: rows of grid point j join at time t_j from a zero state.
    """
    g, T = seqs.shape
    m = len(ts)
    seqs = seqs.to(device)
    state: State | None = None
    joined = 0  # grid points whose rows are in the batch: rows [0, joined·g)
    last = None
    for t0, t1 in segments(T, max(1, chunk), ts):
        while joined < m and ts[joined] <= t0:
            fresh = model.initial_state(g, device=device)
            state = fresh if state is None else concat_states([state, fresh])
            joined += 1
        rows = joined * g
        x = seqs[:, t0:t1].repeat(joined, 1)  # (joined·g, t1 − t0), row j·g + s = sequence s
        for a, b, logits, carried in feed(model, x, state, max(1, tokens_per_forward // rows)):  # rows·(b − a) ≤ budget
            state = carried  # after x[:, :b], the input of the next piece or segment
            if t0 + b == T:
                last = logits[:, -1].float() if logits.dtype in (torch.float16, torch.bfloat16) else logits[:, -1]
            del logits
            if progress is not None:
                progress.update(rows * (b - a))
    assert last is not None and joined == m
    return last.view(m, g, -1).cpu()


@dataclass
class EffRemResult(MetricResult):
    """EffRem_T(t) of Eq. (1) on the grid t, averaged over sequences."""

    T: int
    n_sequences: int
    t: list[int]
    """Grid points, 0 first."""
    effrem: list[float]
    """Mean over sequences of EffRem_T(t), one per grid point."""
    per_sequence_std: list[float]
    """Standard deviation over sequences, one per grid point."""
    tokens_fed: int
    """Tokens run through the model: n · Σ_t (T − t)."""


def effrem_sequence_count(n_tokens: int, T: int, wanted: int) -> int:
    """Windows of T tokens used: min(wanted, n_tokens // T); ``UserError`` when the data holds none."""
    if n_tokens < T:
        raise UserError(f"effective remembrance length {T} is longer than the data ({n_tokens} tokens); "
                        f"use a shorter --effrem-length")
    return min(wanted, n_tokens // T)


def effective_remembrance(
    model: torch.nn.Module,
    tokens: np.ndarray,
    T: int,
    n_sequences: int = 8,
    ts: list[int] | None = None,
    chunk: int = 1024,
    tokens_per_forward: int = 4096,
    device: torch.device | str = "cpu",
    progress=None,
    shard: Shard = ALONE,
) -> EffRemResult:
    """EffRem_T(t) of Eq. (1), averaged over the first ``n_sequences`` non-overlapping windows x[i·T : (i+1)·T];
    ``shard`` splits the windows over several processes, each of which returns the whole result."""
    n = effrem_sequence_count(len(tokens), T, n_sequences)
    ts = sorted(set(ts)) if ts is not None else effrem_grid(T)
    if ts[0] != 0 or ts[-1] >= T:
        raise ValueError(f"effective remembrance grid must start at 0 and stay below T={T}; got {ts}")
    windows = torch.from_numpy(np.asarray(tokens[: n * T]).astype(np.int64).reshape(n, T))
    m = len(ts)
    g = max(1, min(n, tokens_per_forward // (m * min(chunk, T))))
    mine = shard.part(n)
    tv_all = torch.zeros(m, n, dtype=torch.float64)  # (m, n): this process's columns, zeros elsewhere
    for s0 in range(mine.start, mine.stop, g):
        s1 = min(s0 + g, mine.stop)
        last = last_logits_truncated(model, windows[s0:s1], ts, chunk, tokens_per_forward, device, progress)
        tv_all[:, s0:s1] = tv_distance(last[0:1], last)  # against the full context, t = 0
    tv_all = shard.sum(tv_all)  # every process's columns (x + 0 = x: exact)
    return EffRemResult(T=T, n_sequences=n, t=ts, effrem=tv_all.mean(1).tolist(),
                        per_sequence_std=tv_all.std(1, unbiased=False).tolist(), tokens_fed=n * sum(T - t for t in ts))


def effrem_cost(T: int, n_sequences: int) -> int:
    """Tokens fed by ``effective_remembrance``: n · Σ_t (T − t) over the default grid."""
    return n_sequences * sum(T - t for t in effrem_grid(T))


def effrem_length(ctx: EvalContext) -> int:
    """T: ``EvalConfig.effrem_length``, else min(longest evaluation length, ``DEFAULT_EFFREM_LENGTH``)."""
    return ctx.cfg.effrem_length or min(max(ctx.lengths), DEFAULT_EFFREM_LENGTH)


def effrem_settings(ctx: EvalContext) -> dict[str, Any]:
    T = effrem_length(ctx)
    return {"effrem_length": T, "effrem_sequences": effrem_sequence_count(len(ctx.tokens), T, ctx.cfg.effrem_sequences)}


@register_metric("effective_remembrance", EffRemResult, settings=effrem_settings)
def compute_effective_remembrance(ctx: EvalContext) -> EffRemResult:
    """EffRem_T(t) on the default grid (cached per T, sequences and grid; sequences split over ``ctx.shard``)."""
    T, wanted = effrem_length(ctx), ctx.cfg.effrem_sequences
    n = effrem_sequence_count(len(ctx.tokens), T, wanted)
    with ctx.bar(effrem_cost(T, ctx.share(n)), f"effective remembrance T={T}") as bar:
        return ctx.cache.result(
            "effective_remembrance", T, {"n_sequences": wanted, "grid": effrem_grid(T)}, EffRemResult,
            lambda: effective_remembrance(ctx.model, ctx.tokens, T, wanted, chunk=ctx.cfg.chunk,
                                          tokens_per_forward=ctx.tokens_per_forward, device=ctx.device, progress=bar,
                                          shard=ctx.shard))
