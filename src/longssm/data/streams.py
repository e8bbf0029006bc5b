"""Consecutive, unshuffled training windows from B parallel contiguous streams (stateful truncated BPTT).

The token array is cut into B streams of S = N // B tokens: row b holds tokens [b·S, (b+1)·S). Step k
yields window j = k mod W of every stream, W = (S − 1) // T windows per epoch:

    x[b] = stream_b[j·T : j·T + T],    y[b] = stream_b[j·T + 1 : j·T + T + 1]

so row b of window k+1 continues row b of window k exactly. When j wraps to 0 (a new epoch) the batch
says so (``wrapped``) and a carried state must be reset. The cursor is just the step k, which makes a
resumed loader identical to an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..errors import UserError


@dataclass
class Batch:
    x: torch.Tensor
    """Inputs, (B, T) int64."""
    y: torch.Tensor
    """Targets (inputs shifted by one), (B, T) int64."""
    step: int
    """Global step k of this window."""
    epoch: int
    """How many times the streams have wrapped before this window."""
    wrapped: bool
    """True when this window is the first of an epoch after the first (carried states must be reset)."""
    doc_reset: torch.Tensor
    """(B,) bool: a document starts in this row after the previous window's first token and at or
    before this window's first token, i.e. the carried state of that row belongs to another document."""

    def rows(self, part: slice) -> Batch:
        """The same window of the streams ``part`` only (a process's streams, an accumulation micro-batch)."""
        return replace(self, x=self.x[part], y=self.y[part], doc_reset=self.doc_reset[part])


class StreamLoader:
    """The B streams of a token array (``len`` and slicing: a memmap or a prepared dataset's ``TokenArray``), read
    a window at a time: nothing per token is held, so building it costs O(B + documents) whatever the corpus size."""

    def __init__(self, tokens: Any, batch_size: int, seq_len: int, doc_starts: np.ndarray | None = None) -> None:
        n = len(tokens)
        if batch_size < 1 or seq_len < 1:
            raise UserError("batch size and sequence length must be >= 1")
        if n < batch_size * (seq_len + 1):
            raise UserError(
                f"corpus too short: {n} tokens cannot make {batch_size} streams of at least T+1 = {seq_len + 1} tokens "
                f"(need {batch_size * (seq_len + 1)}); use a bigger file or smaller train.batch_size / train.seq_len"
            )
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.stream_len = n // batch_size
        self.windows_per_epoch = (self.stream_len - 1) // seq_len
        self.row_starts = np.arange(batch_size, dtype=np.int64) * self.stream_len
        starts = np.zeros(0, np.int64) if doc_starts is None else np.asarray(doc_starts, dtype=np.int64)
        self.doc_starts = np.unique(starts[starts > 0])

    def __len__(self) -> int:
        """Windows per epoch."""
        return self.windows_per_epoch

    def _documents_begin(self, rows: np.ndarray, after: int, upto: int) -> np.ndarray:
        """(len(rows),) bool: a document starts in stream offsets (after, upto] of each row (binary search)."""
        lo = np.searchsorted(self.doc_starts, self.row_starts[rows] + after, side="right")
        hi = np.searchsorted(self.doc_starts, self.row_starts[rows] + upto, side="right")
        return hi > lo

    def batch(self, step: int, rows: slice | None = None) -> Batch:
        """The window of global step ``step`` (pure function of the step: the step is the data cursor); ``rows``:
        only those streams are read (a process's own)."""
        epoch, j = divmod(step, self.windows_per_epoch)
        start = j * self.seq_len
        picked = np.arange(self.batch_size)[rows if rows is not None else slice(None)]
        chunk = np.stack([np.asarray(self.tokens[int(r) + start : int(r) + start + self.seq_len + 1])
                          for r in self.row_starts[picked]]).astype(np.int64)
        chunk = torch.from_numpy(chunk)
        first = j == 0  # the window after a wrap: the carried state is reset anyway
        doc = np.zeros(len(picked), dtype=bool) if first else self._documents_begin(picked, start - self.seq_len, start)
        return Batch(
            x=chunk[:, :-1],
            y=chunk[:, 1:],
            step=step,
            epoch=epoch,
            wrapped=j == 0 and epoch > 0,
            doc_reset=torch.from_numpy(doc),
        )
