"""Perplexity vs evaluation length (LongSSM [1]) and position-wise loss, as an exact chunked recurrence.

References
    [1] Wang et al., "LongSSM: On the Length Extension of State-space Models in Language Modelling", 2024,
        arXiv:2406.02080 (Sec. 4: perplexity at evaluation lengths 16·2^i; its code also reports a state carried
        across evaluation sequences).

Glossary
    N  evaluation targets, the same at every length: the largest multiple of max(L) that the data holds
    L  evaluation length        n = N / L  sequences        R  parallel streams (carried-state mode)
    q(y | x)  the model's next-token distribution; nll = −log q(y_t | x_{≤t})

For each length L the token stream is cut into n non-overlapping sequences, sequence i = tokens[i·L : i·L + L + 1]
(L inputs, L targets shifted by one), and

    ppl(L) = exp( 1/N · Σ_i Σ_{t<L} nll_i(t) )                                      (1)
    pos(L, t) = 1/n · Σ_i nll_i(t),     so that   ppl(L) = exp( mean_t pos(L, t) )     (2)

Each sequence starts from a zero state (``eval_state="zero"``, the paper's metric). With
``eval_state="previous"`` the n sequences are laid out as R = ⌈n/16⌉ contiguous streams (``order="consecutive"``) or,
after a seeded permutation, as R streams of unrelated sequences (``order="shuffled"``); every sequence starts
from the final state of the one before it in its stream, and the first of every stream from zeros. The order
does not change the zero-state result.

Sequences run as rows of a batch through the one chunked stateful feed (``runtime/feed.py``): pieces of at most
``chunk`` tokens with the state carried, at most ``tokens_per_forward`` tokens (rows × chunk) per forward call, so
peak memory does not grow with L.

Registered metrics: ``ppl_vs_length`` (Eq. 1 at every evaluation length) and ``position_ppl`` (Eq. 2 at one long
length Lp, log-binned; computed by the pass it shares with ``state_stats``, see ``context.py``). Both split their
sequences over several processes (``shard``) and sum the nll over them: the same numbers as one process, up to
float rounding.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ..errors import UserError
from ..models.base import State, select_rows
from ..runtime.distributed import ALONE, Shard
from ..runtime.feed import OnSegment, eval_token_count, make_sequences, sequence_losses
from .registry import MetricResult, check_json, register_metric

__all__ = ["OnSegment", "eval_token_count", "length_curve", "make_sequences", "ppl_vs_length", "sequence_losses"]

if TYPE_CHECKING:
    from .context import EvalContext

EvalState = Literal["zero", "previous"]
Order = Literal["consecutive", "shuffled"]
SEQUENCES_PER_STREAM = 16
"""Carried-state mode: consecutive evaluation sequences per stream (so R = ⌈n / 16⌉ streams start from zeros)."""

def default_tokens_per_forward(vocab_size: int) -> int:
    """Rows × chunk per forward call: large for small vocabularies, bounded so logits stay ≲ 400 MB."""
    return max(1024, min(16384, (2**27 // max(vocab_size, 1)) // 1024 * 1024))


@torch.no_grad()
def length_curve(
    model: torch.nn.Module,
    tokens: np.ndarray,
    length: int,
    n_targets: int,
    eval_state: EvalState = "zero",
    order: Order = "consecutive",
    seed: int = 0,
    streams: int | None = None,
    chunk: int = 1024,
    tokens_per_forward: int = 4096,
    device: torch.device | str = "cpu",
    progress=None,
    cuts: Sequence[int] = (),
    on_segment: OnSegment | None = None,
    shard: Shard = ALONE,
    blocks: torch.Tensor | None = None,
) -> np.ndarray:
    """pos(L, t) of Eq. (2): mean nll at each position t over the n = N/L sequences, (L,) float64.

    ``blocks`` (⌈N / B⌉,) float64, B = ``stats.BLOCK_TOKENS``: when given, the Σ nll of each block of B
    consecutive targets (sequence i's target t is target i·L + t of the evaluation) is added to it, summed over
    the processes like the curve: the blocks of ``stats.bootstrap_interval``.

    Several processes (``shard``): each runs its part of the sequences (zero state) or of the R streams (carried
    state), and the nll sums are summed over the processes, so every process returns the whole curve.

    ``eval_state="previous"``: R = ``streams`` (default ⌈n / 16⌉) streams run in parallel (in row groups of
    ``tokens_per_forward``); stream r holds sequences order[r·k : r·k + k], k = ⌈n / R⌉, each started from the
    final state of the previous one in the stream. With the default, 1/16 of the sequences start from zeros at
    every L with n ≥ 16. ``on_segment`` sees zero-state runs only (rows are sequences).
    """
    seqs = make_sequences(tokens, length, n_targets)
    n = seqs.shape[0]
    if eval_state == "zero":
        part = shard.part(n)
        nll, _ = sequence_losses(model, seqs[part], chunk, tokens_per_forward, device=device,
                                 progress=progress, cuts=cuts, on_segment=on_segment)
        if blocks is not None:
            _add_blocks(blocks, nll, torch.arange(part.start, part.stop), length, shard)
        return (shard.sum(nll.sum(0)) / n).numpy()

    perm = np.random.default_rng(seed).permutation(n) if order == "shuffled" else np.arange(n)
    R = min(n, streams or math.ceil(n / SEQUENCES_PER_STREAM))
    k = math.ceil(n / R)
    R = math.ceil(n / k)  # streams actually used; only the last one may be shorter
    total = torch.zeros(length, dtype=torch.float64)
    mine_blocks = None if blocks is None else torch.zeros_like(blocks)
    state: State | None = None
    mine = shard.part(R)
    for s in range(k):
        active = [r for r in range(mine.start, mine.stop) if r * k + s < n]  # a prefix of this process's streams
        if not active:
            break
        idx = torch.as_tensor(perm[[r * k + s for r in active]])
        if state is not None and len(active) < next(iter(state.values())).shape[0]:
            state = select_rows(state, slice(0, len(active)))
        nll, state = sequence_losses(model, seqs[idx], chunk, tokens_per_forward, initial_state=state, device=device,
                                     progress=progress)
        total += nll.sum(0)
        if mine_blocks is not None:
            _add_blocks(mine_blocks, nll, idx, length, ALONE)
    if blocks is not None:
        blocks += shard.sum(mine_blocks)
    return (shard.sum(total) / n).numpy()


def _add_blocks(blocks: torch.Tensor, nll: torch.Tensor, sequences: torch.Tensor, length: int, shard: Shard) -> None:
    """Add the nll (rows, L) of the evaluation sequences ``sequences`` to ``blocks`` by target index // B (summed
    over the processes of ``shard``)."""
    from ..stats import BLOCK_TOKENS

    ids = (sequences.long()[:, None] * length + torch.arange(length)[None, :]) // BLOCK_TOKENS
    mine = torch.zeros_like(blocks).index_add_(0, ids.reshape(-1), nll.reshape(-1).to(blocks.dtype))
    blocks += shard.sum(mine)


def ppl_vs_length(
    model: torch.nn.Module,
    tokens: np.ndarray,
    lengths: list[int],
    max_tokens: int | None = None,
    chunk: int = 1024,
    tokens_per_forward: int = 4096,
    eval_state: EvalState = "zero",
    order: Order = "consecutive",
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    shard: Shard = ALONE,
) -> dict[str, float]:
    """{str(L): ppl(L)} of Eq. (1) over the same N targets for every L (see the module docstring); ``shard``
    splits the sequences over several processes (``length_curve``), each of which returns the whole result."""
    from tqdm.auto import tqdm

    n_targets = eval_token_count(len(tokens), lengths, max_tokens)
    result: dict[str, float] = {}
    with tqdm(total=n_targets * len(lengths), desc="ppl vs length", unit="tok",
              disable=not (progress and shard.is_main), leave=False) as bar:
        for length in lengths:
            curve = length_curve(model, tokens, length, n_targets, eval_state, order, seed, chunk=chunk,
                                 tokens_per_forward=tokens_per_forward, device=device, progress=bar, shard=shard)
            result[str(length)] = math.exp(float(curve.mean()))
    return result


def log_bins(length: int, per_octave: int = 1) -> list[tuple[int, int]]:
    """Log-spaced bins of context size c = t + 1 ∈ [1, L]: [(lo, hi)] inclusive, lo = ⌈2^(j/per_octave)⌉, no empty
    bins."""
    edges = sorted({math.ceil(2 ** (j / per_octave)) for j in range(int(per_octave * math.log2(max(length, 1))) + 2)})
    edges = [e for e in edges if e <= length] + [length + 1]
    return [(lo, hi - 1) for lo, hi in itertools.pairwise(edges) if hi > lo]


@dataclass
class PositionPplResult(MetricResult):
    """Position-wise loss pos(Lp, t) of Eq. (2), log-binned by context size c = t + 1 (nats per token)."""

    length: int
    """Lp."""
    n_sequences: int
    """Sequences averaged, Np / Lp."""
    ppl: float
    """exp(mean_t pos(Lp, t)) = ppl(Lp) of Eq. (1)."""
    bins: list[dict[str, float]]
    """Octave bins of contexts lo..hi (1, 2–3, 4–7, ...): ``{"lo", "hi", "loss", "ppl"}``."""
    curve: list[dict[str, float]]
    """Eight bins per octave: ``{"context": √(lo·hi), "loss"}``."""


def position_summary(curve: np.ndarray, n_sequences: int, per_octave: int = 8) -> PositionPplResult:
    """Position-wise loss ``curve`` (L,) → octave bins (context 1, 2–3, 4–7, ...) and a finer log-binned curve."""
    length = len(curve)

    def binned(per: int) -> list[dict[str, float]]:
        out = []
        for lo, hi in log_bins(length, per):
            loss = float(curve[lo - 1 : hi].mean())
            out.append({"lo": lo, "hi": hi, "loss": loss, "ppl": math.exp(loss)})
        return out

    return PositionPplResult(
        length=length,
        n_sequences=n_sequences,
        ppl=math.exp(float(curve.mean())),
        bins=binned(1),
        curve=[{"context": round(math.sqrt(b["lo"] * b["hi"]), 2), "loss": b["loss"]} for b in binned(per_octave)],
    )


@dataclass
class PplVsLengthResult(MetricResult):
    """ppl(L) of Eq. (1) at every evaluation length; JSON ``{"16": ppl, "32": ppl, ...}``. ``blocks``: the Σ nll
    of each block of ``stats.BLOCK_TOKENS`` targets at every L, when the evaluation computes intervals (written
    beside the metric by ``evaluate_run``, as ``ppl_blocks``)."""

    ppl: dict[int, float]
    blocks: dict[int, list[float]] | None = None

    def to_json(self) -> dict[str, float]:
        return {str(length): value for length, value in sorted(self.ppl.items())}

    @classmethod
    def from_json(cls, data: Any, where: str) -> PplVsLengthResult:
        check_json(data, dict[str, float], where)
        bad = [key for key in data if not key.isdigit() or int(key) < 1]
        if bad or not data:
            raise UserError(f"{where} must map evaluation lengths to perplexities; got "
                            f"{'the key ' + repr(bad[0]) if bad else 'nothing'}")
        return cls({int(key): float(value) for key, value in data.items()})


@register_metric("ppl_vs_length", PplVsLengthResult)
def compute_ppl_vs_length(ctx: EvalContext) -> PplVsLengthResult:
    """Eq. (1) at every evaluation length, each cached on its own under every setting that changes its value.
    Several processes (``ctx.shard``) split each length's sequences, or streams, between them (``length_curve``)."""
    from ..stats import BLOCK_TOKENS

    cfg = ctx.cfg
    carried, with_blocks = cfg.state == "previous", cfg.ci != "none"
    key = {"n_targets": ctx.n_targets, "eval_state": cfg.state, "order": cfg.order if carried else None,
           "seed": cfg.seed if carried and cfg.order == "shuffled" else None,
           "per_stream": SEQUENCES_PER_STREAM if carried else None}
    if with_blocks:
        key["block_tokens"] = BLOCK_TOKENS
    missing = [L for L in ctx.lengths if not ctx.cache.contains("ppl_vs_length", L, key)]
    ppl: dict[int, float] = {}
    blocks: dict[int, list[float]] = {}
    # the bar counts this process's tokens: its part of the sequences (with carried states, of the streams: about as
    # many)
    with ctx.bar(sum(ctx.share(ctx.n_targets // L) * L for L in missing), "ppl vs length") as bar:
        for L in ctx.lengths:
            def compute(L: int = L) -> dict[str, Any]:
                sums = torch.zeros(math.ceil(ctx.n_targets / BLOCK_TOKENS), dtype=torch.float64)
                if ctx.reuses_position_pass(L) and not with_blocks:
                    curve = ctx.position_pass.mean_nll
                    bar.update(ctx.share(ctx.n_targets // L) * L)
                else:
                    curve = length_curve(ctx.model, ctx.tokens, L, ctx.n_targets, cfg.state, cfg.order, cfg.seed,
                                         chunk=cfg.chunk, tokens_per_forward=ctx.tokens_per_forward, device=ctx.device,
                                         progress=bar, shard=ctx.shard, blocks=sums if with_blocks else None)
                loss = float(curve.mean())
                return {"ppl": math.exp(loss), "loss": loss} | ({"blocks": sums.tolist()} if with_blocks else {})

            value = ctx.cache.get_or_compute("ppl_vs_length", L, key, compute)
            ppl[L] = value["ppl"]
            if with_blocks:
                blocks[L] = value["blocks"]
    return PplVsLengthResult(ppl, blocks if with_blocks else None)


@register_metric("position_ppl", PositionPplResult, settings=lambda ctx: ctx.position_settings())
def compute_position_ppl(ctx: EvalContext) -> PositionPplResult:
    """Position-wise loss from the position pass shared with state_stats (cached per Lp and Np)."""
    return ctx.cache.result("position_ppl", ctx.position_length, {"n_targets": ctx.position_targets},
                            PositionPplResult,
                            lambda: position_summary(ctx.position_pass.mean_nll, ctx.position_pass.n_sequences))
