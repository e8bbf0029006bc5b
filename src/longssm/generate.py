"""Text generation from the carried recurrent state.

The prompt is consumed with the chunked recurrence (``prefill``: chunks of at most ``chunk`` tokens, the state
carried, only the last position's logits kept); then decoding feeds one token at a time from the carried state
(``generate_ids``). Nothing grows with the prompt or the output: the state has a fixed size and no step looks
back at earlier tokens, unlike a Transformer's key/value cache.

Glossary: b batch rows, l tokens, c ≤ chunk tokens of one forward call, V vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from torch import Tensor, nn

from .config import SEED_MAX
from .data.tokenizer import Tokenizer
from .errors import UserError
from .models.base import State
from .runtime.feed import feed

MAX_CHAR_TOKENS = 4
"""A UTF-8 character spans at most 4 bytes, so at most 4 byte-level tokens (``decode_pieces``)."""


@torch.no_grad()
def prefill(model: nn.Module, tokens: Tensor, chunk: int = 1024, state: State | None = None) -> tuple[Tensor, State]:
    """Consume a prompt: tokens (b, l ≥ 1) -> (logits of the next token (b, V), the state after the prompt), fed in
    pieces of at most ``chunk`` tokens through ``runtime.feed.feed``."""
    if tokens.shape[1] == 0:
        raise UserError("the prompt is empty: generation needs at least one prompt token")
    for _, _, logits, carried in feed(model, tokens, state, chunk):
        last = logits[:, -1], carried
    return last


@dataclass(frozen=True)
class Sampler:
    """How the next token is drawn from the logits: temperature, then top-k, then top-p (nucleus) filtering."""

    temperature: float = 1.0
    """Divides the logits; 0 = greedy (argmax, no randomness)."""
    top_k: int | None = None
    """Keep the k most likely tokens (None: all)."""
    top_p: float | None = None
    """Keep the smallest set of most likely tokens whose probability reaches p (None: all)."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(f"--temperature must be a finite number ≥ 0 (0 = greedy); got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top-k must be a positive integer; got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:  # NaN fails too
            raise UserError(f"--top-p must be in (0, 1]; got {self.top_p}")

    def __call__(self, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """logits (b, V) -> next tokens (b,) int64; ``generator`` drives the draw (None: torch's global RNG)."""
        if self.temperature == 0:
            return logits.argmax(-1)
        logits = logits.float() / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            # drop a token when the tokens more likely than it already reach top_p (the first one always stays)
            drop = probs.cumsum(-1) - probs >= self.top_p
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    sampler: Sampler,
    generator: torch.Generator | None = None,
    chunk: int = 1024,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` token ids continuing ``prompt``, one at a time, as they are decoded.

    The prompt is consumed by ``prefill``; every new token is one forward call of shape (1, 1) from the carried
    state. Stopping early (e.g. at a stop string) is the caller's: it simply stops iterating.
    """
    if max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be ≥ 0; got {max_new_tokens}")
    device = next(model.parameters()).device
    logits, state = prefill(model, torch.tensor([prompt], dtype=torch.long, device=device), chunk)
    for i in range(max_new_tokens):
        token = sampler(logits, generator)  # (1,)
        yield int(token)
        if i + 1 < max_new_tokens:
            logits, state = model(token[:, None], state)
            logits = logits[:, -1]


def decode_pieces(tokenizer: Tokenizer, tokens: Iterable[int]) -> Iterator[str]:
    """Token ids in, printable pieces of text out, without decoding the whole output again at every token.

    Pending ids are decoded together; their text is released once it no longer ends in an incomplete UTF-8
    character (U+FFFD), or once ``MAX_CHAR_TOKENS`` ids are pending (an invalid byte then stays U+FFFD).
    """
    pending: list[int] = []
    for token in tokens:
        pending.append(token)
        text = tokenizer.decode(pending)
        if text.endswith("\ufffd") and len(pending) < MAX_CHAR_TOKENS:
            continue
        pending = []
        yield text
    if pending:
        yield tokenizer.decode(pending)


def generate_text(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: list[int],
    max_new_tokens: int,
    sampler: Sampler,
    generator: torch.Generator | None = None,
    chunk: int = 1024,
    until: Sequence[str] = (),
    out: TextIO | None = None,
) -> str:
    """The text continuing ``prompt`` (token ids): ``max_new_tokens`` tokens, or up to (not including) the first
    of the ``until`` strings. With ``out``, each piece of text is written and flushed as soon as it is decoded
    (a stop string included)."""
    longest_stop = max((len(s) for s in until), default=0)
    text = ""
    for piece in decode_pieces(tokenizer, generate_ids(model, prompt, max_new_tokens, sampler, generator, chunk)):
        searched_from = max(0, len(text) - longest_stop + 1)  # a stop string wholly in the old text was found then
        text += piece
        if out is not None:
            out.write(piece)
            out.flush()
        cut = min((i for i in (text.find(s, searched_from) for s in until if s) if i >= 0), default=-1)
        if cut >= 0:
            return text[:cut]
    return text


def generate_from_run(run: str | Path, prompt: str, max_new_tokens: int, sampler: Sampler, seed: int = 0,
                      device: str = "auto", chunk: int = 1024, out: TextIO | None = None) -> str:
    """``generate_text`` for a run or checkpoint directory and a prompt text; the draws come from a generator
    seeded with ``seed`` (in [0, ``config.SEED_MAX``]), so the same seed gives the same text."""
    if not 0 <= seed <= SEED_MAX:
        raise UserError(f"--seed must be in [0, {SEED_MAX}]; got {seed}")
    model, tokenizer = load_for_generation(run, device)
    generator = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    return generate_text(model, tokenizer, tokenizer.encode(prompt), max_new_tokens, sampler, generator, chunk, out=out)


def read_prompt_file(path: str | Path) -> str:
    """The text of the prompt file ``path``; one-line ``UserError`` naming it when it is missing, a directory or
    not UTF-8 text."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--prompt-file {path} is a directory, not a text file")
    if not path.exists():
        raise UserError(f"--prompt-file {path} not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--prompt-file {path} is not UTF-8 text (byte {e.start} cannot be decoded)") from None


def load_for_generation(run: str | Path, device: str = "auto") -> tuple[nn.Module, Tokenizer]:
    """The model of a run or checkpoint directory on ``device`` (auto, cpu, cuda, cuda:N), in eval mode, and its
    tokenizer."""
    from .checkpoint import load_model
    from .data.tokenizer import load_tokenizer
    from .runtime.device import resolve_device

    model, cfg, _ = load_model(run, device=resolve_device(device, "--device"))
    return model, load_tokenizer(cfg.data.tokenizer)
