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
    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, doc_starts: np.ndarray | None = None) -> None:
        n = len(tokens)
        if batch_size < 1 or seq_len < 1:
            raise UserError("batch size and sequence length must be >= 1")
        if n < batch_size * (seq_len + 1):
            raise UserError(
                f"corpus too short: {n} tokens cannot make {batch_size} streams of at least T+1 = {seq_len + 1} tokens "
                f"(need {batch_size * (seq_len + 1)}); use a bigger file or smaller train.batch_size / train.seq_len"
            )
        self.batch_size, self.seq_len = batch_size, seq_len
        self.stream_len = n // batch_size
        self.windows_per_epoch = (self.stream_len - 1) // seq_len
        self.streams = np.asarray(tokens[: batch_size * self.stream_len]).reshape(batch_size, self.stream_len)
        # doc_mark[b, i] = 1 where a document starts at offset i of stream b; prefix sums answer
        # "does a document start in (a, c]" for every row at once.
        mark = np.zeros(batch_size * self.stream_len, dtype=np.int64)
        if doc_starts is not None:
            starts = doc_starts[(doc_starts > 0) & (doc_starts < len(mark))]
            mark[starts] = 1
        self._doc_cum = np.cumsum(mark.reshape(batch_size, self.stream_len), axis=1)

    def __len__(self) -> int:
        """Windows per epoch."""
        return self.windows_per_epoch

    def batch(self, step: int) -> Batch:
        """The window of global step ``step`` (pure function of the step: the step is the data cursor)."""
        epoch, j = divmod(step, self.windows_per_epoch)
        start = j * self.seq_len
        chunk = self.streams[:, start : start + self.seq_len + 1].astype(np.int64)
        chunk = torch.from_numpy(chunk)
        if j > 0:
            prev = start - self.seq_len
            doc = self._doc_cum[:, start] - self._doc_cum[:, prev]
        else:
            doc = np.zeros(self.batch_size, dtype=np.int64)
        return Batch(
            x=chunk[:, :-1],
            y=chunk[:, 1:],
            step=step,
            epoch=epoch,
            wrapped=j == 0 and epoch > 0,
            doc_reset=torch.from_numpy(doc > 0),
        )
