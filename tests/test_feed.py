"""runtime.feed: the chunked stateful feed equals one pass, its per-piece step, and the zero-state perplexity at a
length that training's validation uses equals evaluate's ppl(L) exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longssm.config import ModelConfig
from longssm.evaluate.perplexity import ppl_vs_length
from longssm.models import build_model
from longssm.runtime.feed import feed, perplexity_at_length, segments

V = 19


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(family="mamba", vocab_size=V, d_model=8, n_layers=2, d_state=4, expand=2, d_conv=3, dt_rank=2)
    return build_model(cfg).double().eval()


def test_segments_cut_at_every_chunk_and_every_cut():
    assert segments(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert segments(10, 4, cuts=(0, 3, 4, 10, 12)) == [(0, 3), (3, 4), (4, 8), (8, 10)]


@pytest.mark.parametrize(("chunk", "cuts"), [(1, ()), (5, ()), (7, (2, 3, 11)), (100, (9,))])
def test_chunked_feed_equals_one_pass(model, chunk, cuts):
    tokens = torch.randint(0, V, (3, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_logits, want_state = model(tokens, None)
        pieces = list(feed(model, tokens, None, chunk, cuts))
    assert [(t0, t1) for t0, t1, _, _ in pieces] == segments(23, min(chunk, 23), cuts)
    torch.testing.assert_close(torch.cat([logits for _, _, logits, _ in pieces], 1), want_logits, rtol=0, atol=1e-12)
    final = pieces[-1][3]
    assert final.keys() == want_state.keys()
    for key in want_state:
        torch.testing.assert_close(final[key], want_state[key], rtol=0, atol=1e-12)


def test_step_replaces_the_forward_call_and_receives_the_carried_state(model):
    tokens = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(2))
    seen: list[tuple[int, int, bool]] = []

    def step(t0: int, t1: int, state):
        seen.append((t0, t1, state is None))
        logits, state = model(tokens[:, t0:t1], state)
        return logits.sum(), state

    with torch.no_grad():
        sums = [out for _, _, out, _ in feed(model, tokens, None, 4, step=step)]
        logits, _ = model(tokens, None)
    assert seen == [(0, 4, True), (4, 8, False), (8, 9, False)]
    torch.testing.assert_close(torch.stack(sums).sum(), logits.sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize(("length", "max_tokens"), [(8, None), (16, 200), (5, 61)])
def test_perplexity_at_length_is_evaluates_ppl_exactly(model, length, max_tokens):
    tokens = np.random.default_rng(3).integers(0, V, 300).astype(np.uint16)
    got = perplexity_at_length(model, tokens, length, max_tokens=max_tokens, chunk=3, tokens_per_forward=9)
    want = ppl_vs_length(model, tokens, [length], max_tokens=max_tokens, chunk=3, tokens_per_forward=9)
    assert got == want[str(length)]


@pytest.mark.parametrize("chunk", [0, -3])
def test_a_chunk_below_one_token_is_a_user_error(model, chunk):
    from longssm.errors import UserError

    with pytest.raises(UserError, match=f"chunk must be a positive number of tokens; got {chunk}"):
        next(feed(model, torch.zeros(1, 5, dtype=torch.long), chunk=chunk))
