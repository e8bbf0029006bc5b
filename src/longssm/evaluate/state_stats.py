"""State statistics by position: does the recurrent state grow or collapse past the training length?

For every state tensor h (``"layers.i.ssm"``, ``"layers.i.conv"``, ...; see ``longssm.models.base``) of n
sequences run from a zero state, after c tokens (c on a log grid 1, 2, 4, ..., L):

    norm(c)     = 1/n · Σ_i ‖h_i(c)‖₂            (the whole tensor of row i, flattened)
    mean_abs(c) = 1/n · Σ_i mean |h_i(c)|
    max_abs(c)  = max_i max |h_i(c)|

The statistics are recorded by the evaluator's ``on_segment`` hook during the same chunked pass that computes
position-wise losses: the log grid is added to the chunk boundaries, nothing else is recomputed.
"""

from __future__ import annotations

import math

import torch

from ..models.base import State


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
            acc = self.sums.setdefault(key, {"norm": [0.0] * len(self.positions), "mean_abs": [0.0] * len(self.positions),
                                             "max_abs": [0.0] * len(self.positions)})
            acc["norm"][j] += float(h.norm(dim=1).sum())
            acc["mean_abs"][j] += float(h.abs().mean(dim=1).sum())
            acc["max_abs"][j] = max(acc["max_abs"][j], float(h.abs().max()) if h.numel() else 0.0)

    def result(self, train_seq_len: int | None = None) -> dict:
        """``{"positions": [...], "n_sequences": n, "keys": {key: {"norm": [...], "mean_abs": [...], "max_abs": [...]}},
        "growth": {key: max_abs(L) / max_abs(T)}}`` (growth only when T is on the grid)."""
        keys = {}
        for key, acc in self.sums.items():
            keys[key] = {
                "norm": [s / max(r, 1) for s, r in zip(acc["norm"], self.rows)],
                "mean_abs": [s / max(r, 1) for s, r in zip(acc["mean_abs"], self.rows)],
                "max_abs": list(acc["max_abs"]),
            }
        out = {"positions": self.positions, "n_sequences": max(self.rows) if self.rows else 0, "keys": keys}
        if train_seq_len in self._index:
            j = self._index[train_seq_len]
            out["growth_past_train"] = {
                k: (v["norm"][-1] / v["norm"][j] if v["norm"][j] > 0 else math.inf) for k, v in keys.items()
            }
        return out


def state_statistics(model: torch.nn.Module, seqs: torch.Tensor, chunk: int = 1024, tokens_per_forward: int = 4096,
                     device="cpu", progress=None, train_seq_len: int | None = None) -> dict:
    """State statistics of ``seqs`` (n, L+1) from zero states (a stand-alone pass; see ``StateStats``)."""
    from .perplexity import sequence_losses

    length = seqs.shape[1] - 1
    stats = StateStats(length)
    sequence_losses(model, seqs, chunk, tokens_per_forward, device=device, progress=progress,
                    cuts=stats.positions, on_segment=stats)
    return stats.result(train_seq_len)
