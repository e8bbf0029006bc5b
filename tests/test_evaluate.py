"""Evaluation metrics against independent references: full-sequence forwards, naive loops, toy models whose
memory is known exactly (none, a fixed window, an n-gram copier), and a counter whose state norm is its position.
Then the metric registry, the result types' JSON, reports, plots and the one-line errors of bad inputs."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longssm.config import EvalConfig, ModelConfig
from longssm.data.tokenizer import ByteTokenizer
from longssm.errors import UserError
from longssm.evaluate.passkey import (
    PasskeyResult,
    build_prompt,
    check_passkey_settings,
    min_prompt_length,
    passkey_grid,
)
from longssm.evaluate.perplexity import (
    PositionPplResult,
    PplVsLengthResult,
    eval_token_count,
    length_curve,
    log_bins,
    make_sequences,
    position_summary,
    ppl_vs_length,
    sequence_losses,
)
from longssm.evaluate.plots import check_plot_path, plot_all, plot_ppl_vs_length
from longssm.evaluate.registry import get_metric, metric_names, normalise_metrics
from longssm.evaluate.remembrance import (
    EffRemResult,
    effective_remembrance,
    effrem_grid,
    last_logits_truncated,
    tv_distance,
)
from longssm.evaluate.report import length_extension_verdict, markdown_report, markdown_table, run_label, sweep_grid
from longssm.evaluate.run import compare, load_result, write_outputs
from longssm.evaluate.state_stats import StateStats, StateStatsResult, log_grid
from longssm.models import RecurrentLM, build_model

V = 23


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny forwards are dominated by thread start-up on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_mamba(seed: int = 0, vocab: int = V) -> RecurrentLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(family="mamba", vocab_size=vocab, d_model=8, n_layers=2, d_state=4, expand=2, d_conv=3, dt_rank=2)
    model = build_model(cfg).double()
    with torch.no_grad():  # larger Δ so the state carries real memory
        for layer in model.backbone.layers:
            layer.mixer.dt_proj.bias.add_(1.5)
    return model.eval()


def random_tokens(n: int, vocab: int = V, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.uint16)


class WindowLM(torch.nn.Module):
    """Logits = W · Σ of the embeddings of the last k tokens: memory is exactly k tokens (k = 1: none)."""

    def __init__(self, k: int, vocab: int = V, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.k, self.vocab = k, vocab
        self.emb = torch.nn.Parameter(torch.randn(vocab, 6, generator=g, dtype=torch.float64))
        self.out = torch.nn.Parameter(torch.randn(6, vocab, generator=g, dtype=torch.float64))

    def initial_state(self, batch_size, device=None, dtype=None):
        return {"layers.0.window": torch.zeros(batch_size, max(self.k - 1, 1), 6, dtype=torch.float64)}

    def forward(self, tokens, state=None):
        state = state or self.initial_state(tokens.shape[0])
        past = state["layers.0.window"][:, -(self.k - 1):] if self.k > 1 else state["layers.0.window"][:, :0]
        seq = torch.cat([past, self.emb[tokens]], dim=1)  # (b, k-1+l, 6)
        h = torch.stack([seq[:, i : i + self.k].sum(1) for i in range(tokens.shape[1])], dim=1)
        new = seq[:, -(self.k - 1):] if self.k > 1 else state["layers.0.window"]
        return 3.0 * h @ self.out, {"layers.0.window": new}


class CounterLM(torch.nn.Module):
    """State h = number of tokens seen; uniform logits. ‖h(c)‖ = c exactly."""

    def initial_state(self, batch_size, device=None, dtype=None):
        return {"layers.0.count": torch.zeros(batch_size, 1, dtype=torch.float64)}

    def forward(self, tokens, state=None):
        state = state or self.initial_state(tokens.shape[0])
        count = state["layers.0.count"] + tokens.shape[1]
        return torch.zeros(*tokens.shape, V, dtype=torch.float64), {"layers.0.count": count}


class CopyLM(torch.nn.Module):
    """An induction oracle over bytes: predicts the token that followed the most recent earlier occurrence of the
    last K tokens (uniform if none). Its state is the whole history (test sizes only)."""

    def __init__(self, K: int = 6, H: int = 1024) -> None:
        super().__init__()
        self.K, self.H = K, H

    def initial_state(self, batch_size, device=None, dtype=None):
        return {"layers.0.hist": torch.full((batch_size, self.H), -1.0, dtype=torch.float64),
                "layers.0.len": torch.zeros(batch_size, 1, dtype=torch.float64)}

    def forward(self, tokens, state=None):
        state = state or self.initial_state(tokens.shape[0])
        hist, n = state["layers.0.hist"].clone(), state["layers.0.len"].clone()
        b, l = tokens.shape
        logits = torch.zeros(b, l, 256, dtype=torch.float64)
        for r in range(b):
            h = hist[r].numpy()
            m = int(n[r, 0])
            for i in range(l):
                h[m] = float(tokens[r, i])
                m += 1
                if m > self.K:
                    win = np.lib.stride_tricks.sliding_window_view(h[: m - 1], self.K)  # windows ending before m-1
                    hits = np.nonzero((win == h[m - self.K : m]).all(1))[0]
                    if len(hits):
                        logits[r, i, int(h[hits[-1] + self.K])] = 30.0
            n[r, 0] = m
        return logits, {"layers.0.hist": hist, "layers.0.len": n}


class BigramLM(torch.nn.Module):
    """Random bigram logits: no memory, no knowledge of any key."""

    def __init__(self, vocab: int = 256, seed: int = 0) -> None:
        super().__init__()
        self.W = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2

    def initial_state(self, batch_size, device=None, dtype=None):
        return {"layers.0.dummy": torch.zeros(batch_size, 1, dtype=torch.float64)}

    def forward(self, tokens, state=None):
        return self.W[tokens], state or self.initial_state(tokens.shape[0])


# --- perplexity vs length ---------------------------------------------------------------------------------


def direct_ppl(model, tokens: np.ndarray, length: int, n_targets: int) -> float:
    """Every sequence in one full forward from a zero state, no chunks, no row groups."""
    seqs = make_sequences(tokens, length, n_targets)
    with torch.no_grad():
        logits, _ = model(seqs[:, :-1])
    nll = F.cross_entropy(logits.flatten(0, 1), seqs[:, 1:].flatten(), reduction="none")
    return math.exp(float(nll.mean()))


def test_chunked_ppl_equals_full_sequence_float64():
    model, tokens = tiny_mamba(), random_tokens(300)
    lengths = [4, 8, 16, 32]
    got = ppl_vs_length(model, tokens, lengths, chunk=5, tokens_per_forward=12)  # many chunks and row groups
    n = eval_token_count(len(tokens), lengths, None)
    assert n == 288
    for L in lengths:
        want = direct_ppl(model, tokens, L, n)
        assert abs(got[str(L)] - want) / want < 1e-12, (L, got[str(L)], want)
    assert len({round(v, 6) for v in got.values()}) == len(lengths)  # lengths really differ


@pytest.mark.parametrize("order", ["consecutive", "shuffled"])
@pytest.mark.parametrize("streams", [1, 3, 5])
def test_carried_state_equals_sequential_streams(order, streams):
    model, tokens = tiny_mamba(1), random_tokens(200, seed=1)
    L, n_targets = 8, 96
    seqs = make_sequences(tokens, L, n_targets)
    n = seqs.shape[0]
    perm = np.random.default_rng(7).permutation(n) if order == "shuffled" else np.arange(n)
    k = math.ceil(n / streams)
    total = []
    with torch.no_grad():
        for r in range(math.ceil(n / k)):  # each stream, one sequence after another, full forwards
            state = None
            for i in perm[r * k : (r + 1) * k]:
                logits, state = model(seqs[i : i + 1, :-1], state)
                total.append(F.cross_entropy(logits[0], seqs[i, 1:], reduction="none"))
    want = float(torch.cat(total).mean())
    got = length_curve(model, tokens, L, n_targets, "previous", order, seed=7, streams=streams, chunk=3,
                       tokens_per_forward=6).mean()
    assert abs(got - want) < 1e-12
    zero = length_curve(model, tokens, L, n_targets, "zero").mean()
    assert abs(got - zero) > 1e-7  # the carried state matters


def test_consecutive_single_stream_is_length_independent():
    """One stream in consecutive order is the whole token stream: every L gives the same perplexity."""
    model, tokens = tiny_mamba(2), random_tokens(130, seed=2)
    vals = [length_curve(model, tokens, L, 128, "previous", streams=1, chunk=7).mean() for L in (4, 16, 64)]
    assert max(vals) - min(vals) < 1e-12


def test_position_losses_average_to_ppl_at_same_length():
    model, tokens = tiny_mamba(3), random_tokens(400, seed=3)
    lengths = [16, 64]
    ppl = ppl_vs_length(model, tokens, lengths)
    n = eval_token_count(len(tokens), lengths, None)
    stats = StateStats(64)  # the position pass with the state-statistics cuts and hook
    nll, _ = sequence_losses(model, make_sequences(tokens, 64, n), chunk=10, tokens_per_forward=20,
                             cuts=stats.positions, on_segment=stats)
    curve = nll.mean(0).numpy()
    assert abs(math.exp(curve.mean()) - ppl["64"]) < 1e-10
    summary = position_summary(curve, nll.shape[0])
    weights = [b["hi"] - b["lo"] + 1 for b in summary.bins]
    assert sum(weights) == 64
    assert abs(math.exp(np.average([b["loss"] for b in summary.bins], weights=weights)) - ppl["64"]) < 1e-10
    assert abs(summary.ppl - ppl["64"]) < 1e-10


def test_log_bins_cover_every_position_once():
    for L in (1, 5, 16, 100, 32768):
        for per in (1, 8):
            bins = log_bins(L, per)
            assert bins[0][0] == 1 and bins[-1][1] == L
            assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(bins))


def test_lengths_longer_than_data_is_a_user_error():
    with pytest.raises(UserError, match="longer than the data"):
        eval_token_count(100, [16, 128], None)


# --- effective remembrance ----------------------------------------------------------------------------------


def test_effrem_matches_naive_loop_and_is_zero_at_t0():
    model, tokens = tiny_mamba(4), random_tokens(100, seed=4)
    T, n = 20, 3
    res = effective_remembrance(model, tokens, T, n, chunk=3, tokens_per_forward=10)
    assert res.t == effrem_grid(T) == [0, 1, 2, 4, 8, 12, 16, 18, 19]
    assert res.effrem[0] == 0.0
    assert res.tokens_fed == n * sum(T - t for t in res.t)
    windows = torch.from_numpy(tokens[: n * T].astype(np.int64).reshape(n, T))
    with torch.no_grad():
        want = []
        for t in res.t:
            tv = []
            for s in range(n):
                full, _ = model(windows[s : s + 1])
                part, _ = model(windows[s : s + 1, t:])
                p, q = torch.softmax(full[0, -1], -1), torch.softmax(part[0, -1], -1)
                tv.append(0.5 * float((p - q).abs().sum()))
            want.append(sum(tv) / n)
    np.testing.assert_allclose(res.effrem, want, rtol=1e-10, atol=1e-14)
    assert res.effrem[-1] > res.effrem[1] > 0


def test_truncated_rows_never_see_earlier_tokens():
    """Changing x[0:t] must not change q(·|x[t:T]) of the row that starts at t."""
    model = tiny_mamba(5)
    a = torch.randint(0, V, (1, 24), generator=torch.Generator().manual_seed(0))
    b = a.clone()
    b[0, :8] = (b[0, :8] + 1) % V
    ts = [0, 8, 16]
    la, lb = (last_logits_truncated(model, x, ts, chunk=5, tokens_per_forward=7) for x in (a, b))
    assert (la[0] - lb[0]).abs().max() > 1e-6
    torch.testing.assert_close(la[1:], lb[1:], rtol=0, atol=1e-12)


def test_effrem_of_memoryless_model_is_zero():
    res = effective_remembrance(WindowLM(k=1), random_tokens(200, seed=5), 32, 4, chunk=8)
    assert max(res.effrem) == pytest.approx(0.0, abs=1e-12)


def test_effrem_of_window_model_is_zero_until_the_window():
    """Memory of exactly k tokens: EffRem_T(t) = 0 while x[t:T] still holds the window (t ≤ T − k), > 0 after."""
    k, T = 4, 32
    res = effective_remembrance(WindowLM(k=k), random_tokens(400, seed=6), T, 6, chunk=5, tokens_per_forward=30)
    assert {28, 30, 31} <= set(res.t)
    for t, v in zip(res.t, res.effrem):
        if t <= T - k:
            assert v == pytest.approx(0.0, abs=1e-12), t
        else:
            assert v > 0.05, t
    assert tv_distance(torch.zeros(3), torch.zeros(3)) == 0


# --- passkey ---------------------------------------------------------------------------------------------------


def test_passkey_prompt_has_exact_length_and_the_key():
    tok = ByteTokenizer()
    for L in (min_prompt_length(tok), 300, 1000):
        for d in (0.0, 0.3, 1.0):
            p = build_prompt(tok, L, d, "90210")
            text = tok.decode(p.ids)
            assert len(p.ids) == L and text.endswith("The pass key is") and text.count("90210") == 2
    with pytest.raises(UserError):
        build_prompt(tok, 100, 0.5, "90210")


def test_passkey_copy_oracle_scores_100_percent():
    res = passkey_grid(CopyLM(), ByteTokenizer(), [256, 512], depths=[0.0, 0.5, 1.0], trials=2, chunk=100,
                       tokens_per_forward=400)
    for grid in (res.accuracy, res.ranked_accuracy):
        assert grid == {L: {"0.0": 1.0, "0.5": 1.0, "1.0": 1.0} for L in ("256", "512")}, grid
    assert res.mean_accuracy == {"256": 1.0, "512": 1.0}
    assert all(e["greedy"].strip() == e["key"] for row in res.examples.values() for e in row.values())


def test_passkey_random_model_is_near_chance():
    res = passkey_grid(BigramLM(), ByteTokenizer(), [256], depths=[0.5], trials=80, distractors=9)
    assert res.accuracy["256"]["0.5"] == 0.0  # chance 1e-5
    assert res.ranked_accuracy["256"]["0.5"] <= 0.3  # chance 0.1; binomial sd 0.034
    assert res.ranked_chance == pytest.approx(0.1)


# --- state statistics -----------------------------------------------------------------------------------------


def test_state_stats_of_a_counter_are_its_positions():
    seqs = torch.zeros(5, 41, dtype=torch.long)
    stats = StateStats(40)
    sequence_losses(CounterLM(), seqs, chunk=16, tokens_per_forward=32, cuts=stats.positions, on_segment=stats)
    res = stats.result(train_seq_len=8)
    assert res.positions == log_grid(40) == [1, 2, 4, 8, 16, 32, 40]
    st = res.keys["layers.0.count"]
    assert st["norm"] == st["mean_abs"] == st["max_abs"] == [float(c) for c in res.positions]
    assert res.n_sequences == 5
    assert res.growth_past_train == {"layers.0.count": pytest.approx(5.0)}
    assert "growth_past_train" not in stats.result(train_seq_len=12).to_json()  # T off the grid


# --- verdicts and sweeps ----------------------------------------------------------------------------------------


def test_length_extension_verdicts():
    assert length_extension_verdict({"16": 9, "32": 8, "64": 7.5, "8": 20}, 16)["verdict"] == "strong"
    assert length_extension_verdict({"16": 9, "32": 9, "64": 8}, 16)["verdict"] == "strong"  # flat, then lower
    assert length_extension_verdict({"16": 9, "32": 9.005, "64": 9.0}, 16)["verdict"] == "weak"  # < 1e-3 changes
    assert length_extension_verdict({"16": 9, "32": 8, "64": 8.5}, 16)["verdict"] == "none"
    assert length_extension_verdict({"16": 9, "32": 8}, 32)["verdict"] == "n/a"
    grid = sweep_grid([{"name": "b", "train_seq_len": 64, "ppl_vs_length": {"16": 2.0, "64": 3.0}},
                       {"name": "a", "train_seq_len": 16, "ppl_vs_length": {"16": 4.0}}])
    assert [r["train_seq_len"] for r in grid["rows"]] == [16, 64]
    assert grid["lengths"] == [16, 64]
    assert grid["loss"][0][1] is None and grid["loss"][1][1] == pytest.approx(math.log(3.0))


# --- registry and result types --------------------------------------------------------------------------------------


def test_registry_lists_every_metric_in_canonical_order_and_normalises_the_config_metrics():
    names = ("ppl_vs_length", "position_ppl", "effective_remembrance", "passkey", "state_stats")
    tasks = ("mqar", "copy", "niah_multikey", "niah_multivalue", "niah_multiquery", "variable_tracking")
    assert metric_names() == names + tasks
    assert normalise_metrics(EvalConfig(metrics=["all"]).metrics) == list(names)  # the tasks are asked for by name
    assert normalise_metrics(["tasks", "passkey"]) == ["passkey", *tasks]
    assert normalise_metrics(["state_stats", "ppl_vs_length"]) == ["ppl_vs_length", "state_stats"]
    with pytest.raises(UserError, match="metrics must be"):
        normalise_metrics(["ppl_vs_length", "bogus"])
    with pytest.raises(UserError, match="unknown metric 'bogus'"):
        get_metric("bogus")
    types = [get_metric(n).result_type for n in names]
    assert types == [PplVsLengthResult, PositionPplResult, EffRemResult, PasskeyResult, StateStatsResult]


def test_importing_the_config_does_not_import_torch_or_the_metrics():
    code = ("import sys; import longssm.config, longssm.evaluate.registry; "
            "print(sorted(m for m in ('torch', 'longssm.evaluate.perplexity') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def metric_results() -> dict[str, object]:
    """One real result of every metric, from the toy models (fast)."""
    curve = np.log(np.arange(2.0, 66.0))  # loss grows with the position: (64,)
    stats = StateStats(64)
    sequence_losses(CounterLM(), torch.zeros(3, 65, dtype=torch.long), chunk=16, cuts=stats.positions,
                    on_segment=stats)
    return {
        "ppl_vs_length": PplVsLengthResult({16: 9.0, 32: 8.0, 64: 7.5}),
        "position_ppl": position_summary(curve, 5),
        "effective_remembrance": effective_remembrance(WindowLM(k=4), random_tokens(200, seed=8), 16, 2),
        "passkey": passkey_grid(BigramLM(), ByteTokenizer(), [256], depths=[0.0, 1.0], trials=1),
        "state_stats": stats.result(train_seq_len=16),
    }


def test_every_result_round_trips_through_json(metric_results):
    for name, result in metric_results.items():
        text = json.dumps(result.to_json())
        assert type(result).from_json(json.loads(text), name) == result, name
    assert metric_results["ppl_vs_length"].to_json() == {"16": 9.0, "32": 8.0, "64": 7.5}
    assert set(metric_results["position_ppl"].to_json()) == {"length", "n_sequences", "ppl", "bins", "curve"}


@pytest.mark.parametrize("result_type, data, message", [
    (PplVsLengthResult, [1, 2], "ppl_vs_length must be a mapping; got [1, 2]"),
    (PplVsLengthResult, {"16": "low"}, "ppl_vs_length.16 must be a number; got 'low'"),
    (PplVsLengthResult, {"16": True}, "ppl_vs_length.16 must be a number; got True"),
    (PplVsLengthResult, {"sixteen": 3.0}, "must map evaluation lengths to perplexities; got the key 'sixteen'"),
    (PplVsLengthResult, {}, "got nothing"),
    (EffRemResult, {"T": 16, "n_sequences": 1, "t": [0]}, "effective_remembrance has no 'effrem'"),
    (EffRemResult, {"T": 16.5, "n_sequences": 1, "t": [0], "effrem": [0.0], "per_sequence_std": [0.0],
                    "tokens_fed": 16}, "effective_remembrance.T must be an integer; got 16.5"),
    (PasskeyResult, None, "passkey must be a mapping; got None"),
])
def test_results_of_the_wrong_shape_are_one_line_errors(result_type, data, message):
    name = {PplVsLengthResult: "ppl_vs_length", EffRemResult: "effective_remembrance", PasskeyResult: "passkey"}
    with pytest.raises(UserError) as err:
        result_type.from_json(data, name[result_type])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_nested_shape_errors_name_the_key(metric_results):
    data = metric_results["passkey"].to_json()
    data["accuracy"]["256"]["1.0"] = "all"
    with pytest.raises(UserError, match=r"passkey\.accuracy\.256\.1\.0 must be a number; got 'all'"):
        PasskeyResult.from_json(data, "passkey")


# --- reports, plots and files -------------------------------------------------------------------------------------


def full_result(metric_results, name: str, train_seq_len: int, ppl: dict[str, float]) -> dict:
    """An eval result dict as ``evaluate_run`` returns it (the metric entries from the toy models)."""
    result = {"name": name, "family": "mamba", "scheme": "zero", "train_seq_len": train_seq_len}
    result.update({metric: r.to_json() for metric, r in metric_results.items()})
    result["ppl_vs_length"] = ppl
    return result


def test_markdown_table_and_report(metric_results):
    a = full_result(metric_results, "a", 16, {"16": 9.0, "32": 8.0, "64": 7.5})
    b = full_result(metric_results, "b-previous", 32, {"16": 9.0, "64": 9.5})
    assert markdown_table([a, b]).splitlines() == [
        "| run | 16 | 32 | 64 | verdict |",
        "|---|---:|---:|---:|---|",
        "| a (mamba, zero) | 9.000 | 8.000 | 7.500 | strong |",
        "| b-previous (mamba, zero) | 9.000 |  | 9.500 | n/a |",
    ]
    assert run_label({"run": "runs/x", "scheme": "previous"}) == "x (previous)"
    report = markdown_report([a])
    for heading in ("**Position-wise loss**", "**Effective Remembrance**", "**Passkey**", "**State norm**"):
        assert report.count(heading) == 1, heading
    assert "- a (mamba, zero) layers.0.count: 1 @1 / 16 @T / 64 @64" in report  # the counter's norm is its position
    assert markdown_report([{"name": "c", "ppl_vs_length": {"8": 2.0}}]).count("\n") == 2  # the table alone


def test_plots_write_the_figure_and_its_numbers(metric_results, tmp_path):
    a = full_result(metric_results, "a", 16, {"16": 9.0, "32": 8.0, "64": 7.5})
    b = full_result(metric_results, "b", 32, {"16": 9.0, "64": 9.5})
    written = plot_all([a, b], tmp_path / "plots", heatmap=True)
    assert [p.name for p in written] == [f"{m}.png" for m in normalise_metrics(["all"])] + ["sweep_heatmap.png"]
    for path in written:
        assert path.read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "plots" / "ppl_vs_length.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["run", "length", "ppl"]] + [[label, L, ppl] for label, L, ppl in (
        ("a (mamba, zero)", "16", "9.0"), ("a (mamba, zero)", "32", "8.0"), ("a (mamba, zero)", "64", "7.5"),
        ("b (mamba, zero)", "16", "9.0"), ("b (mamba, zero)", "64", "9.5"))]
    heat = json.loads((tmp_path / "plots" / "sweep_heatmap.json").read_text())
    assert heat["loss"][1] == [math.log(9.0), None, math.log(9.5)]
    svg = plot_ppl_vs_length([a], tmp_path / "one.svg", title="t")
    assert svg.read_text().lstrip().startswith("<?xml") and svg.with_suffix(".csv").is_file()


def test_unwritable_plot_format_fails_before_writing_anything(metric_results, tmp_path):
    a = full_result(metric_results, "a", 16, {"16": 9.0, "32": 8.0})
    for name in ("p.txt", "p"):
        with pytest.raises(UserError, match=r"cannot write a plot to .*\.png"):
            plot_ppl_vs_length([a], tmp_path / name)
    assert list(tmp_path.iterdir()) == []
    assert check_plot_path(tmp_path / "p.PDF").suffix == ".PDF"


def test_write_outputs_and_compare(metric_results, tmp_path):
    a = full_result(metric_results, "a", 16, {"16": 9.0, "32": 8.0, "64": 7.5})
    b = full_result(metric_results, "b", 32, {"16": 9.0, "32": 9.0, "64": 9.5})
    report = write_outputs(a, tmp_path / "a.json", tmp_path / "plots")
    assert load_result(tmp_path / "a.json") == a and a["plots"][0].endswith("ppl_vs_length.png")
    assert (tmp_path / "a.md").read_text() == report + "\n"
    summary = compare([a, b], tmp_path / "cmp")
    assert summary["report"].startswith(markdown_report([a, b]) + "\n\nPaired differences against a (mamba, zero)")
    paired = json.loads((tmp_path / "cmp" / "compare.json").read_text())["paired_differences"]
    assert [(p["length"], p["diff"], p["resolved"]) for p in paired] == [(16, 0.0, False), (32, 1.0, True),
                                                                          (64, 2.0, True)]
    assert all(p["rule"] == "relative change > 0.001" for p in paired)  # these results have no blocks
    runs = json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"]
    assert [(r["label"], r["length_extension"]["verdict"]) for r in runs] == [("a (mamba, zero)", "strong"),
                                                                              ("b (mamba, zero)", "none")]
    assert (tmp_path / "cmp" / "sweep_heatmap.png").is_file()


def test_compare_into_an_existing_file_is_a_one_line_error(metric_results, tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    with pytest.raises(UserError, match="is a file"):
        compare([full_result(metric_results, "a", 16, {"16": 9.0})], target)
    assert target.read_text() == "keep me" and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "is not a longssm eval result (none of the keys"),
    ('{"name": "x"}', "is not a longssm eval result (none of the keys"),
    ('{"ppl_vs_length": [1, 2]}', "ppl_vs_length must be a mapping"),
    ('{"ppl_vs_length": {"16": "x"}}', "ppl_vs_length.16 must be a number"),
    ('{"ppl_vs_length": {"16": 2.0}, "passkey": {"lengths": [256]}}', "passkey has no 'depths'"),
    ("{not json", "is not valid JSON"),
])
def test_load_result_rejects_files_that_are_not_results(tmp_path, content, message):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(UserError) as err:
        load_result(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="no such result file"):
        load_result(tmp_path / "missing.json")


def test_importing_longssm_never_switches_the_matplotlib_backend(tmp_path):
    result = {"name": "a", "ppl_vs_length": {"16": 3.0, "32": 2.0}}
    code = ("import sys, matplotlib; import longssm.cli, longssm.evaluate.plots, longssm.evaluate.run; "
            "from longssm.evaluate.plots import plot_ppl_vs_length; "
            f"plot_ppl_vs_length([{result!r}], {str(tmp_path / 'p.png')!r}); "
            "print(matplotlib.rcParams['backend'], 'matplotlib.pyplot' in sys.modules)")
    env = dict(os.environ, MPLBACKEND="svg", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["svg", "False"]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_passkey_settings_fail_before_any_computation():
    tok = ByteTokenizer()
    with pytest.raises(UserError, match="shorter than the prompt"):
        check_passkey_settings(tok, [64, 512], 5, 9)
    with pytest.raises(UserError, match="--passkey-digits >= 2"):
        check_passkey_settings(tok, [512], 1, 9)  # 8 wrong one-digit keys < 9 distractors: would never finish
    check_passkey_settings(tok, [512], 2, 9)


def test_cache_key_covers_the_model_config_not_only_the_weights(tmp_path):
    from longssm.evaluate.cache import model_hash

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"same weights")
    calibrated = {"family": "mamba", "delta_scale": [1.5]}
    assert model_hash(weights, {"family": "mamba", "delta_scale": None}) != model_hash(weights, calibrated)
    assert model_hash(weights, calibrated) == model_hash(weights, dict(calibrated))


def test_line_styles_tell_the_scheme_by_dash_and_the_rank_by_colour():
    from longssm.evaluate.plots import line_styles

    sweep = [{"scheme": s, "train_seq_len": T} for s in ("zero", "previous") for T in (16, 64, 256)]
    styles = line_styles(sweep)
    assert [st["linestyle"] for st in styles] == ["-"] * 3 + ["--"] * 3
    assert [st["color"] for st in styles[:3]] == [st["color"] for st in styles[3:]]  # same T, same colour
    assert len({st["color"] for st in styles[:3]}) == 3
    one_scheme = line_styles([{"scheme": "zero"}] * 12)  # more than 10 lines: 12 distinct colours, all solid
    assert len({st["color"] for st in one_scheme}) == 12 and {st["linestyle"] for st in one_scheme} == {"-"}
    families = [{"family": f, "scheme": s} for f in ("mamba2", "gla") for s in ("zero", "previous", "previous")]
    styles = line_styles(families)  # several families: colour = family, dash = the rank within the family
    assert len({st["color"] for st in styles[:3]}) == 1 and styles[0]["color"] != styles[3]["color"]
    assert [st["linestyle"] for st in styles] == ["-", "--", ":"] * 2


def test_verdicts_with_blocks_decide_by_the_paired_bootstrap():
    """The same perplexities get another verdict when the evaluation's blocks say how uncertain they are: a 1 %
    drop that the blocks disagree on is not resolved (weak), the same drop on every block is (strong), and a rise
    on every block is none."""
    rng = np.random.default_rng(0)
    counts = [4096.0] * 16
    base = rng.normal(4096 * 2.0, 4096 * 0.3, 16)  # per-block nll sums, loss ~2 nats per token

    def result(second: np.ndarray) -> dict:
        sums = {"16": base.tolist(), "64": second.tolist()}
        ppl = {L: math.exp(sum(s) / sum(counts)) for L, s in sums.items()}
        return {"ppl": ppl, "blocks": {"counts": counts, "sums": sums}}

    noisy = result(base - 4096 * 0.01 + rng.normal(0, 4096 * 0.3, 16))  # ~1 % lower on average, blocks disagree
    steady = result(base - 4096 * 0.01)  # 1 % lower on every block
    rising = result(base + 4096 * 0.01)
    for r, with_blocks, plain in ((noisy, "weak", "strong"), (steady, "strong", "strong"), (rising, "none", "none")):
        assert length_extension_verdict(r["ppl"], 16, r["blocks"])["verdict"] == with_blocks
        assert length_extension_verdict(r["ppl"], 16)["verdict"] == plain  # the 1e-3 rule alone


def test_compare_pairs_runs_block_by_block_and_refuses_other_data(metric_results, tmp_path, capsys):
    counts = [4096.0] * 8
    rng = np.random.default_rng(0)
    base = rng.normal(4096 * 2.0, 500, 8)

    def with_blocks(name: str, sums: np.ndarray, digest: str = "d1") -> dict:
        ppl = math.exp(sums.sum() / sum(counts))
        return {**full_result(metric_results, name, 16, {"16": ppl}), "data_digest": digest,
                "ppl_blocks": {"block_tokens": 4096, "counts": counts, "sums": {"16": sums.tolist()}}}

    a, b = with_blocks("a", base), with_blocks("b", base + 4096 * 0.02)  # 2 % more loss on every block
    summary = compare([a, b], tmp_path / "cmp")
    (row,) = json.loads((tmp_path / "cmp" / "compare.json").read_text())["paired_differences"]
    assert row["rule"] == "paired bootstrap" and row["resolved"] and row["low"] > 0
    assert "| b (mamba, zero) | 16 | +" in summary["report"]
    other = with_blocks("c", base, digest="d2")
    with pytest.raises(UserError, match=r"compare: c \(mamba, zero\) was evaluated on other data than a"):
        compare([a, other], tmp_path / "cmp2")
    shorter = {**b, "name": "d", "ppl_vs_length": {"16": 1.0, "32": 1.0}}
    with pytest.raises(UserError, match=r"compare: d \(mamba, zero\) was evaluated at other lengths .*16,32 vs 16"):
        compare([a, shorter], tmp_path / "cmp2")
    assert not (tmp_path / "cmp2").exists()
