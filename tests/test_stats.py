"""``longssm.stats`` and the intervals of ``longssm eval``: the Student t interval against its formula with a
tabulated quantile, the bootstrap's degenerate cases, blocks that a direct loop over the evaluation targets
reproduces (zero and carried state), intervals that hold the perplexity, and ``--ci none``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longssm.config import ModelConfig
from longssm.evaluate import report
from longssm.evaluate.perplexity import length_curve
from longssm.models import build_model
from longssm.stats import (
    BLOCK_TOKENS,
    Blocks,
    block_counts,
    bootstrap_interval,
    excludes_zero,
    paired_interval,
    t_interval,
)

T_975_2 = 4.302652729911275  # the 0.975 quantile of Student's t with 2 degrees of freedom (tables)


def test_t_interval_is_the_textbook_formula():
    got = t_interval([1.0, 2.0, 3.0])
    assert got["mean"] == 2.0 and got["std"] == pytest.approx(1.0) and got["n"] == 3
    assert got["half_width"] == pytest.approx(T_975_2 / math.sqrt(3))
    assert t_interval([5.0]) == {"mean": 5.0, "std": None, "half_width": None, "n": 1}


def test_bootstrap_of_identical_blocks_is_a_point_and_a_paired_difference_of_equal_runs_is_zero():
    sums, counts = [4096 * 1.5] * 8, [4096.0] * 8
    got = bootstrap_interval(sums, counts)
    assert got["low"] == pytest.approx(math.exp(1.5)) and got["high"] == pytest.approx(math.exp(1.5))
    rng = np.random.default_rng(0)
    noisy = rng.normal(4096 * 1.5, 300, 8)
    same = paired_interval(noisy, noisy, counts)
    assert same["diff"] == 0 and same["low"] == pytest.approx(0) and same["high"] == pytest.approx(0)
    assert not excludes_zero(same)
    shifted = paired_interval(noisy, noisy + 4096 * 0.01, counts)  # 1 % higher loss on every block
    assert excludes_zero(shifted) and shifted["low"] > 0
    assert math.isnan(bootstrap_interval([1.0], [4096.0])["low"])  # one block: no interval


def test_block_counts_cover_every_target():
    assert block_counts(3 * BLOCK_TOKENS).tolist() == [BLOCK_TOKENS] * 3
    assert block_counts(BLOCK_TOKENS + 10).tolist() == [BLOCK_TOKENS, 10]


def test_blocks_round_trip_json_and_pair_only_the_same_blocks():
    rng = np.random.default_rng(1)
    n = 3 * BLOCK_TOKENS + 7
    counts = block_counts(n)
    sums = {64: (counts * rng.normal(1.6, 0.05, 4)).tolist(), 16: (counts * rng.normal(1.7, 0.05, 4)).tolist()}
    blocks = Blocks.of(n, sums)
    assert list(blocks.sums) == ["16", "64"] and sum(blocks.counts) == n
    again = Blocks.from_json(blocks.to_json())
    assert again == Blocks(blocks.counts, blocks.sums)
    assert Blocks.from_json(None) is None and Blocks.from_json({"counts": []}) is None
    assert blocks.interval(16) == bootstrap_interval(sums[16], blocks.counts)
    assert blocks.paired(again, 16, 64) == paired_interval(sums[16], sums[64], blocks.counts)
    assert blocks.paired(Blocks.of(n + BLOCK_TOKENS, {16: [1.0] * 5}), 16, 16) is None  # other blocks
    assert blocks.paired(again, 16, 128) is None  # a length the other lacks
    assert Blocks.of(10, {16: [1.0]}).paired(Blocks.of(10, {16: [2.0]}), 16, 16) is None  # one block: no pairing


def test_a_stored_verdict_is_used_and_a_stale_one_is_decided_again(monkeypatch):
    ppl = {"16": 5.0, "64": 6.0, "256": 5.5}
    stored = report.length_extension_verdict(ppl, 16)
    assert stored["verdict"] == "none"
    calls = []
    decide = report.length_extension_verdict
    monkeypatch.setattr(report, "length_extension_verdict", lambda *a, **k: calls.append(a) or decide(*a, **k))
    assert report.verdict_of({"ppl_vs_length": ppl, "train_seq_len": 16, "length_extension": stored}) == "none"
    assert calls == []  # decided once, when the result was written
    assert report.verdict_of({"ppl_vs_length": ppl, "train_seq_len": 64, "length_extension": stored}) == "strong"
    old = {k: v for k, v in stored.items() if k != "rule"}  # written before the rule: decided again
    assert report.verdict_of({"ppl_vs_length": ppl, "train_seq_len": 16, "length_extension": old}) == "none"
    assert len(calls) == 2


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(family="mamba", d_model=8, n_layers=1, d_state=4, vocab_size=50)).eval()


def direct_nll(model, tokens: torch.Tensor, start=None) -> tuple[torch.Tensor, object]:
    """nll of every target of one sequence by one whole forward pass (no chunking)."""
    logits, state = model(tokens[None, :-1], start)
    return F.cross_entropy(logits[0].double(), tokens[1:], reduction="none"), state


@pytest.mark.parametrize("state", ["zero", "previous"])
def test_blocks_are_the_nll_sums_of_consecutive_targets(state):
    model = tiny_model()
    n_targets, L = 3 * BLOCK_TOKENS, 2048
    tokens = np.random.default_rng(1).integers(0, 50, n_targets + 1)
    blocks = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        curve = length_curve(model, tokens, L, n_targets, state, chunk=300, tokens_per_forward=600, streams=2,
                             blocks=blocks)
        t = torch.as_tensor(tokens)
        nll, carried = [], [None, None]  # streams of 3 consecutive sequences each (6 sequences, 2 streams)
        for i in range(n_targets // L):
            stream = i // 3
            row, s = direct_nll(model, t[i * L: i * L + L + 1], carried[stream] if state == "previous" else None)
            carried[stream] = s
            nll.append(row)
    flat = torch.cat(nll)
    expected = flat.reshape(3, BLOCK_TOKENS).sum(1)
    torch.testing.assert_close(blocks, expected, rtol=1e-9, atol=1e-6)
    assert math.isclose(float(curve.mean()), float(flat.mean()), rel_tol=1e-9)
