"""The one chunked stateful feed: a long token sequence through a recurrent LM in pieces, the state carried.

Glossary
    b  rows (sequences fed side by side)      l  tokens per row      c  chunk (tokens per forward call)
    V  vocabulary size                        s_t  the model's state after t tokens of a row (all layers)

Feeding tokens[:, 0:l] as pieces [t0, t1) with the state carried,

    logits[:, t0:t1], s_{t1} = model(tokens[:, t0:t1], s_{t0})                                   (1)

gives exactly the logits and the final state of one pass over the whole row (the stateful interface of
``models.base``), while memory is that of one piece: O(b · c · V) whatever l is. Every evaluator, generation's
prefill, passkey, effective remembrance, calibration and training's periodic validation feed sequences through
``feed`` (Eq. 1). On top of it, ``sequence_losses`` gives per-token nll of many sequences in row groups, and
``perplexity_at_length`` LongSSM's ppl(L) from the zero state, used by training's validation and by
``evaluate.perplexity``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from ..models.base import State, concat_states, select_rows
from .distributed import ALONE, Shard

OnSegment = Callable[[slice, int, State], None]
"""``on_segment(rows, t_end, state)``: called after every forward call with the rows it covered and the state
after ``t_end`` tokens of those rows (state statistics hook)."""


def segments(length: int, chunk: int, cuts: Iterable[int] = ()) -> list[tuple[int, int]]:
    """[(t0, t1), ...] covering [0, length): every multiple of ``chunk`` and every cut in (0, length) is a boundary."""
    edges = set(range(0, length, chunk)) | {c for c in cuts if 0 < c < length} | {length}
    return list(itertools.pairwise(sorted(edges | {0})))


PieceStep = Callable[[int, int, State | None], tuple[Tensor, State]]
"""``step(t0, t1, s_{t0}) -> (out, s_{t1})``: computes piece [t0, t1) in place of ``model(tokens[:, t0:t1], s_{t0})``
(it slices what it needs itself), e.g. calibration's forward under activation checkpointing, which returns the
piece's summed loss instead of its logits."""


def feed(
    model: Callable[[Tensor, State | None], tuple[Tensor, State]],
    tokens: Tensor,
    state: State | None = None,
    chunk: int = 1024,
    cuts: Sequence[int] = (),
    *,
    step: PieceStep | None = None,
) -> Iterator[tuple[int, int, Tensor, State]]:
    """Eq. (1): yields ``(t0, t1, logits (b, t1 − t0, V), s_{t1})`` for the pieces of ``tokens`` (b, l), cut every
    ``chunk`` tokens and at every position in ``cuts``, starting from ``state`` (None = zeros). The last state yielded
    is the state after the whole row. Gradients flow through the carried state unless the caller runs it under
    ``torch.no_grad``; nothing is kept between pieces, so a consumer that drops each piece's logits holds one piece.

    ``step`` (optional, ``PieceStep``) replaces each forward call: piece [t0, t1) is then ``step(t0, t1, s_{t0})``
    and its first output is yielded in place of the logits (``model`` is then not called). Calibration passes a step
    that runs the piece under ``torch.utils.checkpoint`` and returns its loss, so gradients reach its scales through
    every carried state while only one piece's activations are held. A ``chunk`` below 1 is a ``UserError``."""
    if chunk < 1:
        raise UserError(f"chunk must be a positive number of tokens; got {chunk}")
    for t0, t1 in segments(tokens.shape[1], chunk, cuts):
        out, state = model(tokens[:, t0:t1], state) if step is None else step(t0, t1, state)
        yield t0, t1, out, state


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """logits (b, l, V), targets (b, l) -> nll (b, l) in float64 (half-precision logits are upcast first)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return nll.view(targets.shape).double()


def eval_token_count(n_available: int, lengths: Iterable[int], max_tokens: int | None) -> int:
    """N, the targets used at every length: the largest multiple of max(L) that fits the data and the budget."""
    longest = max(lengths)
    budget = n_available - 1 if max_tokens is None else min(n_available - 1, max_tokens)
    n = (max(budget, 0) // longest) * longest
    if n == 0:
        if max_tokens is not None and max_tokens < longest <= n_available - 1:
            raise UserError(f"evaluation length {longest} is longer than --max-tokens {max_tokens}; raise --max-tokens")
        raise UserError(
            f"evaluation length {longest} is longer than the data: {n_available} tokens give at most "
            f"{max(n_available - 1, 0)} targets; use shorter --lengths or more data"
        )
    return n


def make_sequences(tokens: np.ndarray, length: int, n_targets: int) -> Tensor:
    """(n_targets / L, L + 1) int64: sequence i = tokens[i·L : i·L + L + 1] (L inputs, L targets shifted by one)."""
    n = n_targets // length
    idx = np.arange(n)[:, None] * length + np.arange(length + 1)[None, :]
    return torch.from_numpy(np.asarray(tokens[: n_targets + 1]).astype(np.int64)[idx])


@torch.no_grad()
def sequence_losses(
    model: torch.nn.Module,
    seqs: Tensor,
    chunk: int = 1024,
    tokens_per_forward: int = 4096,
    initial_state: State | None = None,
    device: torch.device | str = "cpu",
    progress=None,
    cuts: Sequence[int] = (),
    on_segment: OnSegment | None = None,
) -> tuple[Tensor, State]:
    """Per-token nll of ``seqs`` (n, L+1) → (n, L) float64 on the CPU, and the final states (n rows, on ``device``).

    Rows are fed ``max(1, tokens_per_forward // chunk)`` at a time through ``feed`` (pieces every ``chunk`` tokens
    and at every position in ``cuts``), so peak memory is O(tokens_per_forward · V) whatever L is.
    ``initial_state`` (n rows) or None = zeros; n = 0 gives no states.
    """
    n, l_plus = seqs.shape
    length = l_plus - 1
    chunk = max(1, min(chunk, length))
    rows = max(1, tokens_per_forward // chunk)
    out = torch.empty(n, length, dtype=torch.float64)
    finals: list[State] = []
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        block = seqs[r0:r1].to(device)
        start = None if initial_state is None else select_rows(initial_state, slice(r0, r1))
        for t0, t1, logits, state in feed(model, block[:, :length], start, chunk, cuts):
            out[r0:r1, t0:t1] = token_nll(logits, block[:, t0 + 1 : t1 + 1]).cpu()
            del logits
            if on_segment is not None:
                on_segment(slice(r0, r1), t1, state)
            if progress is not None:
                progress.update((r1 - r0) * (t1 - t0))
        finals.append(state)
    return out, concat_states(finals) if finals else {}


@torch.no_grad()
def perplexity_at_length(
    model: torch.nn.Module,
    tokens: np.ndarray,
    length: int,
    *,
    max_tokens: int | None = None,
    chunk: int = 1024,
    tokens_per_forward: int = 4096,
    device: torch.device | str = "cpu",
    shard: Shard = ALONE,
) -> float:
    """ppl(L) = exp(mean nll) over the sequences of length L in the first ``max_tokens`` targets of ``tokens``, every
    sequence from the zero state (LongSSM's metric at one length; training's periodic validation at L = T)."""
    seqs = make_sequences(tokens, length, eval_token_count(len(tokens), [length], max_tokens))
    n = seqs.shape[0]
    nll, _ = sequence_losses(model, seqs[shard.part(n)], chunk, tokens_per_forward, device=device)
    curve = (shard.sum(nll.sum(0)) / n).numpy()  # pos(L, t), (L,) float64
    return math.exp(float(curve.mean()))  # numpy's mean, as evaluate's ppl(L): torch's may differ in the last bit
