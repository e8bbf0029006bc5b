"""Passkey retrieval vs context length and depth: a random number hidden in filler text must be recalled.

References
    [1] Mohtashami & Jaggi, "Landmark Attention: Random-Access Infinite Context Length for Transformers", 2023
        (the passkey task and its filler text, which we follow; our instruction line is shorter,
        so that byte-level prompts fit in 256 tokens).

A prompt of exactly L tokens is

    PREFIX  filler … filler  NEEDLE  filler … filler  QUESTION
                             ^ at depth d ∈ [0, 1] of the filler (snapped to a filler sentence boundary)

NEEDLE = "The pass key is 71432. Remember it. 71432 is the pass key." and QUESTION ends with "The pass key is";
the model must continue with " 71432". The prompt runs as one exact chunked recurrence; from its final state

- ``accuracy``: greedy decoding of as many tokens as the answer has; a hit when the decoded text, stripped,
  starts with the key (chance ≈ 10^-digits);
- ``ranked_accuracy``: the key's log-likelihood (teacher-forced) beats that of every one of K random distractor
  keys (chance = 1 / (K + 1)).

Works with any tokenizer: pieces are tokenized separately and concatenated, so with the byte tokenizer the digits
are single bytes. Cost: trials × depths × L tokens per length. Several processes (``torchrun``) each run the whole
grid: it is not split between them.

Registers the metric ``passkey``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.tasks import PASSKEY_PREFIX, PASSKEY_QUESTION, REPEAT, number
from ..errors import UserError
from ..models.base import State, select_rows
from ..runtime.feed import feed
from .registry import MetricResult, register_metric

if TYPE_CHECKING:
    from .context import EvalContext

PREFIX, FILLER, QUESTION = PASSKEY_PREFIX, REPEAT, PASSKEY_QUESTION
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
DISTRACTORS = 9
"""K: random wrong keys the true key is ranked against (chance 1 / (K + 1))."""
LONGEST_DEFAULT_LENGTH = 8192
"""Passkey lengths default to the evaluation lengths up to this one."""


@dataclass
class PasskeyPrompt:
    ids: list[int]
    """The prompt, exactly L token ids."""
    key: str
    """The digits to recall."""
    depth: float
    """Requested depth; the needle sits after ``needle_at`` filler tokens."""
    needle_at: int


random_key = number
"""A ``digits``-digit number without a leading zero (the tasks' ``number``)."""


def min_prompt_length(tokenizer, digits: int = 5) -> int:
    """Tokens of PREFIX + NEEDLE + QUESTION + one filler round: the shortest L accepted."""
    key = "9" * digits
    fixed = tokenizer.encode(PREFIX) + tokenizer.encode(NEEDLE.format(key=key)) + tokenizer.encode(QUESTION)
    return len(fixed) + sum(len(tokenizer.encode(x)) for x in FILLER)


def build_prompt(tokenizer, length: int, depth: float, key: str) -> PasskeyPrompt:
    """The prompt of the module docstring with exactly ``length`` tokens.

    The filler is whole sentences repeated, cut at its *start* to fit; the needle goes to the sentence
    boundary nearest to ``depth`` × (filler tokens).
    """
    prefix, needle, question = (tokenizer.encode(PREFIX), tokenizer.encode(NEEDLE.format(key=key)),
                                tokenizer.encode(QUESTION))
    sentences = [tokenizer.encode(x) for x in FILLER]
    body = length - len(prefix) - len(needle) - len(question)
    if body < 0:
        raise UserError(f"passkey length {length} is too short: the prompt needs at least "
                        f"{len(prefix) + len(needle) + len(question)} tokens with this tokenizer")
    hay: list[int] = []
    ends: list[int] = [0]
    while len(hay) < body:
        for sent in sentences:
            hay += sent
            ends.append(len(hay))
    cut = len(hay) - body
    hay = hay[cut:]
    bounds = [0] + [e - cut for e in ends if e - cut > 0]
    at = min(bounds, key=lambda b: (abs(b - depth * body), b))
    ids = prefix + hay[:at] + needle + hay[at:] + question
    assert len(ids) == length
    return PasskeyPrompt(ids, key, depth, at)


@torch.no_grad()
def _prompt_states(model, prompts: list[list[int]], chunk: int, tokens_per_forward: int, device, progress):
    """Run equal-length prompts (b, L) as one chunked recurrence → (last logits (b, V), state after L tokens)."""
    x = torch.tensor(prompts, dtype=torch.long, device=device)
    b = x.shape[0]
    for t0, t1, logits, carried in feed(model, x, None, max(1, min(chunk, tokens_per_forward // b))):
        last = logits[:, -1], carried
        del logits
        if progress is not None:
            progress.update(b * (t1 - t0))
    return last


def _expand(state: State, rows: int) -> State:
    """One row's state repeated ``rows`` times."""
    return {k: v.expand(rows, *v.shape[1:]).contiguous() for k, v in state.items()}


@torch.no_grad()
def _answer_logprob(model, last: torch.Tensor, state: State, candidates: list[list[int]]) -> list[float]:
    """Σ log q(answer tokens) of each candidate (same row state), teacher-forced, grouped by token length."""
    scores = [0.0] * len(candidates)
    by_len: dict[int, list[int]] = {}
    for i, c in enumerate(candidates):
        by_len.setdefault(len(c), []).append(i)
    first = torch.log_softmax(last.double(), -1)  # (V,)
    for n_tok, idx in by_len.items():
        ids = torch.tensor([candidates[i] for i in idx], dtype=torch.long, device=last.device)  # (c, n_tok)
        total = first[ids[:, 0]]
        if n_tok > 1:
            logits, _ = model(ids[:, :-1], _expand(state, len(idx)))
            logp = torch.log_softmax(logits.double(), -1)
            total = total + logp.gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)
        for i, v in zip(idx, total.tolist()):
            scores[i] = v
    return scores


@torch.no_grad()
def _greedy(model, last: torch.Tensor, state: State, steps: int) -> torch.Tensor:
    """Greedy continuation from (last logits (b, V), state): (b, steps) token ids."""
    out = []
    tok = last.argmax(-1)
    for s in range(steps):
        out.append(tok)
        if s + 1 < steps:
            logits, state = model(tok[:, None], state)
            tok = logits[:, -1].argmax(-1)
    return torch.stack(out, dim=1)


def passkey_at_length(
    model,
    tokenizer,
    length: int,
    depths: list[float],
    trials: int = 4,
    digits: int = 5,
    distractors: int = DISTRACTORS,
    seed: int = 0,
    chunk: int = 1024,
    tokens_per_forward: int = 4096,
    device="cpu",
    progress=None,
) -> dict:
    """Accuracy at one length L for every depth: ``{"accuracy": {depth: acc}, "ranked_accuracy": {...}, ...}``."""
    rng = np.random.default_rng([seed, length])
    acc, ranked, examples = {}, {}, {}
    for depth in depths:
        prompts = [build_prompt(tokenizer, length, depth, random_key(rng, digits)) for _ in range(trials)]
        hits, rank_hits = 0, 0
        group = max(1, tokens_per_forward // max(1, min(chunk, length)))
        for g0 in range(0, trials, group):
            batch = prompts[g0 : g0 + group]
            last, state = _prompt_states(model, [p.ids for p in batch], chunk, tokens_per_forward, device, progress)
            answers = [tokenizer.encode(" " + p.key) for p in batch]
            decoded = _greedy(model, last, state, max(len(a) for a in answers)).cpu()
            for i, p in enumerate(batch):
                text = tokenizer.decode(decoded[i, : len(answers[i])].tolist())
                hits += text.strip().startswith(p.key)
                others: set[str] = set()
                while len(others) < distractors:
                    k = random_key(rng, digits)
                    if k != p.key:
                        others.add(k)
                cands = [answers[i]] + [tokenizer.encode(" " + k) for k in sorted(others)]
                scores = _answer_logprob(model, last[i], select_rows(state, slice(i, i + 1)), cands)
                rank_hits += scores[0] > max(scores[1:])
                if depth not in examples:
                    examples[depth] = {"key": p.key, "greedy": text}
        acc[str(depth)] = hits / trials
        ranked[str(depth)] = rank_hits / trials
    return {"accuracy": acc, "ranked_accuracy": ranked, "examples": {str(d): e for d, e in examples.items()}}


@dataclass
class PasskeyResult(MetricResult):
    """Passkey accuracy over the length × depth grid. Per-length maps are keyed by ``str(L)``, then ``str(depth)``."""

    lengths: list[int]
    depths: list[float]
    trials: int
    """Random keys per (length, depth) cell."""
    digits: int
    distractors: int
    """K, the random keys the true one is ranked against."""
    chance: float
    """Chance of ``accuracy``: 10^-digits."""
    ranked_chance: float
    """Chance of ``ranked_accuracy``: 1 / (K + 1)."""
    accuracy: dict[str, dict[str, float]]
    """Greedy exact match."""
    ranked_accuracy: dict[str, dict[str, float]]
    """The key's log-likelihood beats every distractor's."""
    mean_accuracy: dict[str, float]
    """``accuracy`` averaged over depths."""
    mean_ranked_accuracy: dict[str, float]
    examples: dict[str, dict[str, dict[str, str]]]
    """One ``{"key", "greedy"}`` per length and depth, to read what the model answered."""


def check_passkey_settings(tokenizer, lengths: list[int], digits: int, distractors: int) -> None:
    """``UserError`` when a length is shorter than ``min_prompt_length`` or the keys of ``digits`` digits are too
    few to draw ``distractors`` distinct wrong ones."""
    wrong_keys = 9 * 10 ** (digits - 1) - 1
    if distractors > wrong_keys:
        raise UserError(f"passkeys of {digits} digit(s) leave {wrong_keys} wrong keys, fewer than the {distractors} "
                        f"distractors; use --passkey-digits >= {digits + 1}")
    shortest = min_prompt_length(tokenizer, digits)
    too_short = [x for x in lengths if x < shortest]
    if too_short:
        raise UserError(f"passkey lengths {too_short} are shorter than the prompt's fixed part ({shortest} tokens "
                        f"with this tokenizer); use --passkey-lengths >= {shortest}")


def passkey_grid(model, tokenizer, lengths: list[int], depths: list[float], trials: int = 4, digits: int = 5,
                 distractors: int = DISTRACTORS, seed: int = 0, chunk: int = 1024, tokens_per_forward: int = 4096,
                 device="cpu", progress=None,
                 cached: Callable[[int, Callable[[], dict]], dict] | None = None) -> PasskeyResult:
    """The length × depth grid. ``cached(L, compute)`` (optional) wraps the per-length computation for caching."""
    check_passkey_settings(tokenizer, lengths, digits, distractors)
    per_length = {}
    for length in lengths:
        def compute(length: int = length) -> dict:
            return passkey_at_length(model, tokenizer, length, depths, trials, digits, distractors, seed, chunk,
                                     tokens_per_forward, device, progress)
        per_length[str(length)] = cached(length, compute) if cached else compute()
    return PasskeyResult(
        lengths=lengths,
        depths=depths,
        trials=trials,
        digits=digits,
        distractors=distractors,
        chance=10.0 ** -digits,
        ranked_chance=1 / (distractors + 1),
        accuracy={k: v["accuracy"] for k, v in per_length.items()},
        ranked_accuracy={k: v["ranked_accuracy"] for k, v in per_length.items()},
        mean_accuracy={k: float(np.mean(list(v["accuracy"].values()))) for k, v in per_length.items()},
        mean_ranked_accuracy={k: float(np.mean(list(v["ranked_accuracy"].values()))) for k, v in per_length.items()},
        examples={k: v["examples"] for k, v in per_length.items()},
    )


def default_passkey_lengths(lengths: list[int], shortest: int, longest: int = LONGEST_DEFAULT_LENGTH) -> list[int]:
    """The evaluation lengths in [shortest, longest]; if none, the shortest power of two ≥ shortest."""
    chosen = [x for x in lengths if shortest <= x <= longest]
    if chosen:
        return chosen
    p = 1
    while p < shortest:
        p *= 2
    return [p]


def passkey_lengths(ctx: EvalContext) -> list[int]:
    """``EvalConfig.passkey_lengths``, else ``default_passkey_lengths`` of the evaluation lengths; checked."""
    cfg = ctx.cfg
    lengths = cfg.passkey_lengths or default_passkey_lengths(ctx.lengths, min_prompt_length(ctx.tokenizer,
                                                                                               cfg.passkey_digits))
    check_passkey_settings(ctx.tokenizer, lengths, cfg.passkey_digits, DISTRACTORS)
    return lengths


def passkey_settings(ctx: EvalContext) -> dict[str, Any]:
    return {"passkey_lengths": passkey_lengths(ctx), "passkey_depths": ctx.cfg.passkey_depths,
            "passkey_trials": ctx.cfg.passkey_trials}


@register_metric("passkey", PasskeyResult, settings=passkey_settings)
def compute_passkey(ctx: EvalContext) -> PasskeyResult:
    """The passkey grid, each length cached on its own."""
    cfg = ctx.cfg
    lengths, depths = passkey_lengths(ctx), cfg.passkey_depths
    key = {"depths": depths, "trials": cfg.passkey_trials, "digits": cfg.passkey_digits, "seed": cfg.seed,
           "tokenizer": ctx.tokenizer.identity}
    with ctx.bar(cfg.passkey_trials * len(depths) * sum(lengths), "passkey") as bar:
        return passkey_grid(ctx.model, ctx.tokenizer, lengths, depths, cfg.passkey_trials, cfg.passkey_digits,
                            seed=cfg.seed, chunk=cfg.chunk, tokens_per_forward=ctx.tokens_per_forward,
                            device=ctx.device, progress=bar,
                            cached=lambda L, compute: ctx.cache.get_or_compute("passkey", L, key, compute))
