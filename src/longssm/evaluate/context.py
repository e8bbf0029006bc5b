"""What every metric's compute function receives: the loaded model and data, the resolved settings, the cache,
progress bars, this process's place among several (``shard``), and the long zero-state pass that position_ppl
and state_stats share.

Several processes (``torchrun ... -m longssm eval``): ppl_vs_length, the position pass (position_ppl,
state_stats) and effective_remembrance split their sequences over the processes and sum what they measure over
them, so every process ends with the whole result; passkey runs whole in every process. Only rank 0 shows
progress bars and writes the cache.

Glossary (as in ``perplexity.py``)
    N   evaluation targets, the same at every length (``n_targets``)
    Lp  length of the position pass (``position_length``: ``EvalConfig.position_length`` or the longest L)
    Np  targets of the position pass (``position_targets``): N cut to a multiple of Lp, or, when Lp > N,
        the largest multiple of Lp that the data holds
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import EvalConfig
from ..runtime.distributed import ALONE, Shard
from .cache import EvalCache
from .perplexity import eval_token_count, make_sequences, sequence_losses
from .state_stats import StateStats

if TYPE_CHECKING:
    from tqdm import tqdm

    from ..data.tokenizer import Tokenizer


@dataclass
class PositionPass:
    """One zero-state pass over Np / Lp sequences of length Lp."""

    mean_nll: np.ndarray
    """pos(Lp, t) of ``perplexity.py`` Eq. (2): mean nll at each position t, (Lp,) float64."""
    n_sequences: int
    """Np / Lp."""
    state_stats: StateStats
    """The state statistics recorded on the way (log-grid positions added to the chunk boundaries)."""


@dataclass
class EvalContext:
    """Shared by the metrics of one ``evaluate_run``."""

    cfg: EvalConfig
    model: torch.nn.Module
    """The run's model, in eval mode, on ``device``."""
    tokenizer: Tokenizer
    tokens: np.ndarray
    """The evaluation data as token ids, (n_data,)."""
    train_seq_len: int
    """T, the run's training window length."""
    lengths: list[int]
    """Evaluation lengths L, sorted: ``cfg.lengths`` or the defaults that the data holds."""
    n_targets: int
    """N."""
    tokens_per_forward: int
    """Rows × chunk tokens per forward call: ``cfg.batch_tokens`` or chosen from the vocabulary size."""
    device: torch.device
    cache: EvalCache
    progress: bool
    """Show progress bars (``evaluate_run`` sets it in rank 0 only)."""
    shard: Shard = ALONE
    """This process's place among the processes that share the evaluation (``ALONE``: the only one)."""

    def bar(self, total: int, desc: str) -> tqdm:
        """A progress bar counting ``total`` tokens of this process (silent when ``progress`` is off)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="tok", disable=not self.progress, leave=False, dynamic_ncols=True)

    def share(self, n: int) -> int:
        """How many of ``n`` sequences this process runs (the size of ``shard.part(n)``)."""
        part = self.shard.part(n)
        return part.stop - part.start

    @cached_property
    def position_length(self) -> int:
        """Lp."""
        return self.cfg.position_length or max(self.lengths)

    @cached_property
    def position_targets(self) -> int:
        """Np (``UserError`` when Lp is longer than the data or ``max_tokens``)."""
        Lp = self.position_length
        if Lp <= self.n_targets:
            return (self.n_targets // Lp) * Lp
        return eval_token_count(len(self.tokens), [Lp], self.cfg.max_tokens)

    def position_settings(self) -> dict[str, Any]:
        """The settings hook of position_ppl and state_stats."""
        return {"position_length": self.position_length, "position_targets": self.position_targets}

    def reuses_position_pass(self, length: int) -> bool:
        """Whether zero-state perplexity at ``length`` is read off the position pass (same sequences, same
        targets) because position_ppl or state_stats is evaluated too."""
        wanted = "position_ppl" in self.cfg.metrics or "state_stats" in self.cfg.metrics
        return (wanted and self.cfg.state == "zero" and length == self.position_length
                and self.position_targets == self.n_targets)

    @cached_property
    def position_pass(self) -> PositionPass:
        """Run (once) the position pass; exact chunked recurrence from zero states, memory flat in Lp. Several
        processes: each runs its part of the Np / Lp sequences; the nll sums and the state statistics are summed
        (maxima: maximised) over the processes."""
        Lp, Np = self.position_length, self.position_targets
        seqs = make_sequences(self.tokens, Lp, Np)
        n, mine = seqs.shape[0], self.shard.part(seqs.shape[0])
        stats = StateStats(Lp)
        with self.bar(self.share(n) * Lp, f"position loss + state L={Lp}") as bar:
            nll, _ = sequence_losses(self.model, seqs[mine], self.cfg.chunk, self.tokens_per_forward,
                                     device=self.device, progress=bar, cuts=stats.positions, on_segment=stats)
        if self.shard.world > 1:
            stats.all_reduce(self.shard, list(self.model.initial_state(1, device=self.device)))
        return PositionPass((self.shard.sum(nll.sum(0)) / n).numpy(), n, stats)
