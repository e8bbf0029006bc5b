"""Confidence intervals for perplexities: over seeds (Student t) and over the evaluated text (a block bootstrap).

Glossary
    loss    mean next-token negative log-likelihood (nats); ppl = exp(loss)
    target  one scored token; an evaluation at length L scores the same N targets at every L (``perplexity.py``)
    block   the targets [j B, (j + 1) B) of the evaluation stream, B = ``BLOCK_TOKENS``, kept as its Σ nll (its
            count is B, the last block's N − (nb − 1) B): the unit the bootstrap resamples
    CI      a two-sided interval at ``confidence`` (0.95 unless said otherwise)

Over seeds: the K per-seed values x_1..x_K of a quantity (a perplexity at one L, or a paired difference) give
mean ± t_{K-1, (1+c)/2} · s / sqrt(K) (``t_interval``); one seed gives no interval.

Over the text: the loss at one L is Σ nll / Σ count over its blocks. ``bootstrap_interval`` resamples the blocks
with replacement (``scipy.stats.bootstrap``, percentile method, a fixed seed, ``BOOTSTRAP_RESAMPLES``) and
reports the interval of that ratio, mapped to perplexity by exp (monotone, so the interval maps exactly). Blocks
are the same token ranges at every L and in every run evaluated on the same data, so differences (between two
runs, or between two lengths of one run) are bootstrapped paired, block by block (``paired_interval``): what the
two share, the text, cancels.

Why blocks of 4,096 consecutive targets, and what that assumes: the targets inside a block share their context
(one sequence, or with a carried state, ``eval --state previous``, consecutive sequences of one stream), so they
are resampled together, never apart; resampling single tokens would treat thousands of correlated losses as
independent and give far too narrow an interval. Blocks are then treated as independent of one another. That is
an approximation: neighbouring blocks come from the same article, and with a carried state a block starts from
the state its predecessor left. The interval is therefore the uncertainty due to which text was scored, at the
granularity of 4k-token passages; it says nothing about the seed (see ``t_interval``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BLOCK_TOKENS = 4096
"""Targets per bootstrap block."""
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


def block_counts(n_targets: int, block: int = BLOCK_TOKENS) -> np.ndarray:
    """The number of targets of each block of an evaluation of ``n_targets`` targets."""
    nb = max(1, math.ceil(n_targets / block))
    counts = np.full(nb, block, dtype=np.float64)
    counts[-1] = n_targets - block * (nb - 1)
    return counts


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float | None]:
    """``{"mean", "std", "half_width", "n"}`` of ``values`` (one per seed); std and half_width None for one value."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("t_interval of no values")
    if len(x) == 1:
        return {"mean": float(x[0]), "std": None, "half_width": None, "n": 1}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * std / math.sqrt(len(x)))
    return {"mean": float(x.mean()), "std": std, "half_width": half, "n": len(x)}


def _bootstrap(data: tuple[np.ndarray, ...], statistic, confidence: float, seed: int) -> tuple[float, float]:
    from scipy import stats

    if len(data[0]) < 2:
        return math.nan, math.nan
    result = stats.bootstrap(data, statistic, paired=True, vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES,
                             confidence_level=confidence, method="percentile", random_state=seed)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def bootstrap_interval(sums: Sequence[float], counts: Sequence[float], confidence: float = CONFIDENCE,
                       seed: int = 0) -> dict[str, float]:
    """``{"low", "high", "blocks"}``: the bootstrap interval of the perplexity of blocks with Σ nll ``sums`` and
    ``counts`` targets (NaN bounds with fewer than two blocks)."""
    s, c = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    low, high = _bootstrap((s, c), lambda s, c, axis=-1: s.sum(axis) / c.sum(axis), confidence, seed)
    return {"low": math.exp(low), "high": math.exp(high), "blocks": len(s)}


def paired_interval(sums_a: Sequence[float], sums_b: Sequence[float], counts: Sequence[float],
                    confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, float]:
    """``{"diff", "low", "high", "relative"}``: ppl(b) − ppl(a) over the same blocks and its paired bootstrap
    interval; ``relative`` = diff / ppl(a)."""
    a, b, c = (np.asarray(x, dtype=np.float64) for x in (sums_a, sums_b, counts))
    if not a.shape == b.shape == c.shape:
        raise ValueError("paired_interval needs the same blocks on both sides")

    def diff(x, y, n, axis=-1):
        return np.exp(y.sum(axis) / n.sum(axis)) - np.exp(x.sum(axis) / n.sum(axis))

    low, high = _bootstrap((a, b, c), diff, confidence, seed)
    base = math.exp(a.sum() / c.sum())
    d = math.exp(b.sum() / c.sum()) - base
    return {"diff": d, "low": low, "high": high, "relative": d / base}


def excludes_zero(interval: dict[str, float]) -> bool:
    """True when a difference's interval lies wholly on one side of zero (NaN bounds: False)."""
    return bool(interval["low"] > 0 or interval["high"] < 0)


@dataclasses.dataclass(frozen=True)
class Blocks:
    """The blocks of one evaluation: ``counts`` targets per block (the same at every L) and, per length L (a
    string, as in a result JSON), the Σ nll of each block. A result JSON keeps them as ``ppl_blocks``:
    ``{"block_tokens", "counts", "sums": {L: [...]}}`` (``to_json`` / ``from_json``)."""

    counts: tuple[float, ...]
    sums: Mapping[str, Sequence[float]]
    block_tokens: int = BLOCK_TOKENS

    @classmethod
    def of(cls, n_targets: int, sums: Mapping[int | str, Sequence[float]]) -> Blocks:
        """The blocks of an evaluation of ``n_targets`` targets with the per-block sums ``{L: [...]}``."""
        return cls(tuple(block_counts(n_targets).tolist()),
                   {str(L): list(v) for L, v in sorted(sums.items(), key=lambda kv: int(kv[0]))})

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Blocks | None:
        """The blocks of a result's ``ppl_blocks``; None when it has none (``--ci none``, older results)."""
        if not data or not data.get("counts"):
            return None
        return cls(tuple(data["counts"]), dict(data.get("sums") or {}), int(data.get("block_tokens", BLOCK_TOKENS)))

    def to_json(self) -> dict[str, Any]:
        return {"block_tokens": self.block_tokens, "counts": list(self.counts), "sums": dict(self.sums)}

    def interval(self, L: int | str, confidence: float = CONFIDENCE) -> dict[str, float]:
        """``bootstrap_interval`` of ppl(L)."""
        return bootstrap_interval(self.sums[str(L)], self.counts, confidence)

    def paired(self, other: Blocks, L: int | str, L_other: int | str,
               confidence: float = CONFIDENCE) -> dict[str, float] | None:
        """``paired_interval`` of ppl_other(L_other) − ppl_self(L); None when the two do not share at least two
        blocks of the same sizes, or lack a length."""
        L, L_other = str(L), str(L_other)
        if len(self.counts) < 2 or self.counts != other.counts or L not in self.sums or L_other not in other.sums:
            return None
        return paired_interval(self.sums[L], other.sums[L_other], self.counts, confidence)
