"""Periodic validation (``train.eval_every``): perplexity at the training length from the zero state."""

from __future__ import annotations

import numpy as np
import torch

from ..config import TrainConfig
from ..runtime.distributed import ALONE, Shard
from ..runtime.feed import perplexity_at_length


class PeriodicValidation:
    """Perplexity at T = ``seq_len`` on the first ``eval_tokens`` validation tokens, every sequence started from the
    zero state and the sequences split over the processes of ``shard``, every ``eval_every`` steps."""

    def __init__(self, tokens: np.ndarray | None, tc: TrainConfig, device: torch.device, shard: Shard = ALONE) -> None:
        self.tokens = tokens
        self.tc = tc
        self.device = device
        self.shard = shard

    def due(self, step: int) -> bool:
        """Whether step ``step`` (1-based) validates."""
        return bool(self.tc.eval_every) and step % self.tc.eval_every == 0

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> float:
        """ppl(T) of ``model`` (put back into training mode afterwards)."""
        model.eval()
        T = self.tc.seq_len
        ppl = perplexity_at_length(model, self.tokens, T, max_tokens=self.tc.eval_tokens, device=self.device,
                                   shard=self.shard)
        model.train()
        return ppl
