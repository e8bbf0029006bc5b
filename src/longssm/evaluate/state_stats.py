"""State statistics by position: does the recurrent state grow or collapse past the training length?

For every state tensor h (``"layers.i.ssm"``, ``"layers.i.conv"``, ...; see ``longssm.models.base``) of n
sequences run from a zero state, after c tokens (c on a log grid 1, 2, 4, ..., L):

    norm(c)     = 1/n · Σ_i ‖h_i(c)‖₂            (the whole tensor of row i, flattened)
    mean_abs(c) = 1/n · Σ_i mean |h_i(c)|
    max_abs(c)  = max_i max |h_i(c)|

The statistics are recorded by the evaluator's ``on_segment`` hook during the same chunked pass that computes
position-wise losses (``EvalContext.position_pass``): the log grid is added to the chunk boundaries, nothing
else is recomputed. Several processes each record their part of the sequences; ``StateStats.all_reduce`` then
sums the sums and row counts, and takes the maximum of max_abs, over the processes. Registers the metric
``state_stats``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..models.base import State
from ..runtime.distributed import Shard
from .registry import MetricResult, register_metric

if TYPE_CHECKING:
    from .context import EvalContext


def log_grid(length: int) -> list[int]:
    """1, 2, 4, ..., and L itself: the positions (tokens consumed) where the state is measured."""
    grid = [2**k for k in range(int(math.log2(length)) + 1)] if length >= 1 else []
    return sorted(set(grid) | {length})


class StateStats:
    """Accumulates per-key norm / mean |h| / max |h| at the positions of ``log_grid(L)`` over row groups."""

    def __init__(self, length: int) -> None:
        self.positions = log_grid(length)
        self._index = {c: j for j, c in enumerate(self.positions)}
        self.rows = [0] * len(self.positions)
        self.sums: dict[str, dict[str, list[float]]] = {}

    def __call__(self, rows: slice, t_end: int, state: State) -> None:
        j = self._index.get(t_end)
        if j is None:
            return
        n = rows.stop - rows.start
        self.rows[j] += n
        for key, h in state.items():
            h = h.detach().flatten(1).double()  # (n, numel per row)
            acc = self.sums.setdefault(key, {stat: [0.0] * len(self.positions)
                                             for stat in ("norm", "mean_abs", "max_abs")})
            acc["norm"][j] += float(h.norm(dim=1).sum())
            acc["mean_abs"][j] += float(h.abs().mean(dim=1).sum())
            acc["max_abs"][j] = max(acc["max_abs"][j], float(h.abs().max()) if h.numel() else 0.0)

    def all_reduce(self, shard: Shard, keys: Sequence[str]) -> None:
        """Combine every process's statistics in place (two host-side all-reduces): the norm and mean |h| sums and
        the row counts are summed, max |h| is maximised. ``keys``: every state key, in the same order in every
        process (a process that saw no rows has recorded none)."""
        if unknown := set(self.sums) - set(keys):
            raise ValueError(f"state keys {sorted(unknown)} are not among {list(keys)}")
        P = len(self.positions)
        zeros = {stat: [0.0] * P for stat in ("norm", "mean_abs", "max_abs")}
        acc = [self.sums.get(key, zeros) for key in keys]
        sums = torch.tensor([self.rows] + [a[stat] for a in acc for stat in ("norm", "mean_abs")],
                            dtype=torch.float64).view(-1, P)  # (1 + 2K, P): rows, then norm and mean_abs per key
        maxima = torch.tensor([a["max_abs"] for a in acc], dtype=torch.float64).view(-1, P)  # (K, P)
        sums, maxima = shard.sum(sums), shard.max(maxima)
        self.rows = [round(r) for r in sums[0].tolist()]
        self.sums = {key: {"norm": sums[1 + 2 * i].tolist(), "mean_abs": sums[2 + 2 * i].tolist(),
                           "max_abs": maxima[i].tolist()} for i, key in enumerate(keys)}

    def result(self, train_seq_len: int | None = None) -> StateStatsResult:
        """The averages over the rows seen; growth past T only when T is on the grid."""
        keys = {}
        for key, acc in self.sums.items():
            keys[key] = {
                "norm": [s / max(r, 1) for s, r in zip(acc["norm"], self.rows)],
                "mean_abs": [s / max(r, 1) for s, r in zip(acc["mean_abs"], self.rows)],
                "max_abs": list(acc["max_abs"]),
            }
        growth = None
        if train_seq_len in self._index:
            j = self._index[train_seq_len]
            growth = {k: (v["norm"][-1] / v["norm"][j] if v["norm"][j] > 0 else math.inf) for k, v in keys.items()}
        return StateStatsResult(self.positions, max(self.rows) if self.rows else 0, keys, growth)


@dataclass
class StateStatsResult(MetricResult):
    """State magnitude by position, per state tensor."""

    positions: list[int]
    """The log grid c = 1, 2, 4, ..., L."""
    n_sequences: int
    keys: dict[str, dict[str, list[float]]]
    """State key -> ``{"norm": [norm(c)], "mean_abs": [mean_abs(c)], "max_abs": [max_abs(c)]}`` over ``positions``."""
    growth_past_train: dict[str, float] | None = None
    """State key -> norm(L) / norm(T): how much the state grows past the training length (when T is on the grid)."""

    def to_json(self) -> dict[str, Any]:
        out = {"positions": self.positions, "n_sequences": self.n_sequences, "keys": self.keys}
        if self.growth_past_train is not None:
            out["growth_past_train"] = self.growth_past_train
        return out


@register_metric("state_stats", StateStatsResult, settings=lambda ctx: ctx.position_settings())
def compute_state_stats(ctx: EvalContext) -> StateStatsResult:
    """State statistics from the position pass shared with position_ppl (cached per Lp and Np)."""
    return ctx.cache.result("state_stats", ctx.position_length, {"n_targets": ctx.position_targets}, StateStatsResult,
                            lambda: ctx.position_pass.state_stats.result(ctx.train_seq_len))
