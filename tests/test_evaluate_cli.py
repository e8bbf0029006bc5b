"""``evaluate_run`` and ``longssm eval`` / ``compare`` / ``plot`` end to end on a tiny trained run: every metric
against the stand-alone evaluators, the cache and its keys, the files written, and bad input (one-line error,
exit code 2, no traceback)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_overrides
from longssm.checkpoint import load_model
from longssm.cli import main
from longssm.config import EvalConfig, load_config
from longssm.data.corpus import load_corpus
from longssm.data.tokenizer import ByteTokenizer
from longssm.errors import UserError
from longssm.evaluate.perplexity import eval_token_count, length_curve, ppl_vs_length
from longssm.evaluate.registry import normalise_metrics
from longssm.evaluate.remembrance import effective_remembrance
from longssm.evaluate.report import length_extension_verdict, markdown_table
from longssm.evaluate.run import evaluate_run
from longssm.evaluate.state_stats import log_grid
from longssm.train import train

METRICS = normalise_metrics(["all"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, wiki_text):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evalcli")
    corpus = root / "corpus.txt"
    corpus.write_text(wiki_text[:20_000], encoding="utf-8")
    cfg = load_config(None, tiny_overrides(corpus, root / "cache", state__scheme="previous"))
    train(cfg, root / "run")
    yield root, root / "run", corpus
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_and_tokens(trained):
    """The trained model and the evaluation tokens, for the stand-alone reference evaluators."""
    root, run, corpus = trained
    model, _, _ = load_model(run)
    return model, load_corpus(str(corpus), ByteTokenizer(), root / "cache", progress=False).tokens


def every_metric(corpus: Path, **settings) -> EvalConfig:
    return EvalConfig(data=str(corpus), metrics=["all"], lengths=[8, 16, 64], max_tokens=640, chunk=16,
                      effrem_length=32, effrem_sequences=2, passkey_lengths=[256], passkey_trials=1,
                      passkey_depths=[0.0, 1.0], **settings)


def test_evaluate_run_matches_the_stand_alone_evaluators_and_caches(trained, model_and_tokens, tmp_path):
    _, run, corpus = trained
    model, tokens = model_and_tokens
    cfg = every_metric(corpus, cache_dir=str(tmp_path / "cache"))
    res = evaluate_run(run, cfg, progress=False)
    assert (res["train_seq_len"], res["scheme"], res["family"], res["name"]) == (8, "previous", "mamba", "tiny")
    assert res["metrics"] == METRICS and res["settings"]["n_targets"] == 640
    want = ppl_vs_length(model, tokens, [8, 16, 64], max_tokens=640, chunk=5, tokens_per_forward=100)
    assert res["ppl_vs_length"] == pytest.approx(want, rel=1e-5)
    assert len(set(want.values())) == 3 and max(want.values()) < 256  # lengths differ; better than uniform
    assert res["length_extension"] == length_extension_verdict(res["ppl_vs_length"], 8, res["ppl_blocks"])
    assert res["ppl_blocks"]["counts"] == [640] and set(res["ppl_blocks"]["sums"]) == {"8", "16", "64"}
    assert (res["position_ppl"]["length"], res["position_ppl"]["n_sequences"]) == (64, 10)
    assert res["position_ppl"]["ppl"] == pytest.approx(want["64"], rel=1e-5)
    effrem = effective_remembrance(model, tokens, 32, 2, chunk=7)
    assert res["effective_remembrance"]["t"] == effrem.t
    assert res["effective_remembrance"]["effrem"] == pytest.approx(effrem.effrem, rel=1e-4, abs=1e-6)
    assert set(res["passkey"]["accuracy"]) == {"256"} and set(res["passkey"]["accuracy"]["256"]) == {"0.0", "1.0"}
    assert res["state_stats"]["positions"] == log_grid(64)
    assert set(res["state_stats"]["keys"]) == set(model.initial_state(1))  # every layer's every state part
    assert res["settings"]["effrem_length"] == 32 and res["settings"]["passkey_lengths"] == [256]
    entries = 3 + 1 + 1 + 1 + 1  # ppl per length, position, effrem, passkey per length, state
    assert (res["cache"]["hits"], res["cache"]["misses"]) == (0, entries)

    again = evaluate_run(run, cfg, progress=False)  # the same checkpoint, data and settings: all from the cache
    assert (again["cache"]["hits"], again["cache"]["misses"]) == (entries, 0)
    assert {m: again[m] for m in METRICS} == {m: res[m] for m in METRICS}

    reseeded = evaluate_run(run, dataclasses.replace(cfg, seed=1), progress=False)  # only the passkeys use the seed
    assert (reseeded["cache"]["hits"], reseeded["cache"]["misses"]) == (entries - 1, 1)


def test_carried_state_matches_the_stand_alone_evaluator(trained, model_and_tokens):
    _, run, corpus = trained
    model, tokens = model_and_tokens
    cfg = EvalConfig(data=str(corpus), lengths=[8, 32, 128], max_tokens=1024, state="previous", order="shuffled",
                     seed=3, use_cache=False)
    res = evaluate_run(run, cfg, progress=False)
    n = eval_token_count(len(tokens), [128], 1024)
    for L in (8, 32, 128):
        want = math.exp(length_curve(model, tokens, L, n, "previous", "shuffled", seed=3).mean())
        assert res["ppl_vs_length"][str(L)] == pytest.approx(want, rel=1e-5), L
    assert res["cache"] == {"dir": None, "hits": 0, "misses": 3}


@pytest.mark.parametrize("settings, needle", [
    ({"lengths": [8, 1_000_000]}, "longer than the data"),
    ({"metrics": ["ppl_vs_length", "passkey"], "passkey_lengths": [64]}, "shorter than the prompt"),
    ({"metrics": ["ppl_vs_length", "passkey"], "passkey_lengths": [256], "passkey_digits": 1}, "--passkey-digits"),
    ({"metrics": ["ppl_vs_length", "effective_remembrance"], "effrem_length": 10_000_000}, "longer than the data"),
    ({"metrics": ["ppl_vs_length", "state_stats"], "position_length": 10_000_000}, "longer than the data"),
])
def test_data_dependent_errors_come_before_any_computation(trained, tmp_path, settings, needle):
    _, run, corpus = trained
    cfg = EvalConfig(data=str(corpus), **{"lengths": [8], "cache_dir": str(tmp_path / "cache"), **settings})
    with pytest.raises(UserError, match=needle):
        evaluate_run(run, cfg, progress=False)
    assert not (tmp_path / "cache").exists()  # ppl_vs_length (first in order) never ran


# --- the command line ---------------------------------------------------------------------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_cli_writes_the_result_json_markdown_and_plots(trained, capsys):
    root, run, corpus = trained
    out, plots = root / "all.json", root / "plots"
    code, stdout, err = run_cli(
        capsys, "eval", str(run), "--data", str(corpus), "--metrics", ",".join(METRICS), "--lengths", "8,16,64",
        "--max-tokens", "640", "--json", str(out), "--plots", str(plots), "--effrem-length", "32",
        "--effrem-sequences", "2", "--passkey-lengths", "256", "--passkey-trials", "1", "--passkey-depths", "0,1",
        "--chunk", "16", "--no-progress")
    assert code == 0, err
    res = json.loads(out.read_text())
    expected = evaluate_run(run, every_metric(corpus), progress=False)  # the flags mean this config
    assert {m: res[m] for m in METRICS} == {m: expected[m] for m in METRICS}
    assert res["settings"] == expected["settings"]
    assert out.with_suffix(".md").read_text().startswith(markdown_table([res]))
    assert stdout.startswith(markdown_table([res])) and "**Effective Remembrance**" in stdout
    for name in METRICS:
        assert (plots / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert len((plots / f"{name}.csv").read_text().splitlines()) > 1
    assert sorted(res["plots"]) == sorted(str(plots / f"{name}.png") for name in METRICS)


def test_carried_state_option_and_compare_cli(trained, capsys, tmp_path):
    _, run, corpus = trained
    zero, prev = tmp_path / "zero.json", tmp_path / "prev.json"
    base = ["eval", str(run), "--data", str(corpus), "--lengths", "8,32,128", "--max-tokens", "1024", "--no-progress",
            "--no-cache"]
    assert run_cli(capsys, *base, "--json", str(zero))[0] == 0
    code, _, err = run_cli(capsys, *base, "--json", str(prev), "--state", "previous", "--order", "shuffled")
    assert code == 0, err
    a, b = json.loads(zero.read_text()), json.loads(prev.read_text())
    assert (a["settings"]["eval_state"], b["settings"]["eval_state"]) == ("zero", "previous")
    assert b["settings"]["order"] == "shuffled" and a["ppl_vs_length"] != b["ppl_vs_length"]
    b["name"], b["train_seq_len"] = "other", 32  # a second "run" trained at another T, for the sweep heatmap
    prev.write_text(json.dumps(b))
    out = tmp_path / "cmp"
    code, stdout, err = run_cli(capsys, "compare", str(zero), str(prev), "--out", str(out))
    assert code == 0, err
    for f in ("ppl_vs_length.png", "ppl_vs_length.csv", "sweep_heatmap.png", "sweep_heatmap.json", "compare.md",
              "compare.json"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "compare.json").read_text())
    assert [r["train_seq_len"] for r in summary["runs"]] == [8, 32]
    assert [r["length_extension"] for r in summary["runs"]] == [
        length_extension_verdict(r["ppl_vs_length"], r["train_seq_len"], r.get("ppl_blocks")) for r in (a, b)]
    assert stdout.startswith(markdown_table([a, b]))


def assert_one_line_error(code: int, err: str, command: str, needle: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"longssm {command}: error:"), err
    assert needle in lines[0], lines[0]


def test_vocab_mismatch_is_a_one_line_error(trained, capsys, tmp_path):
    _, run, corpus = trained
    bad = tmp_path / "bad"
    (bad / "final").mkdir(parents=True)
    for f in (run / "final").iterdir():
        (bad / "final" / f.name).write_bytes(f.read_bytes())
    cfg = yaml.safe_load((bad / "final" / "config.yaml").read_text())
    cfg["data"]["tokenizer"] = "gpt2"  # 50257 tokens, the checkpoint has 256
    (bad / "final" / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli(capsys, "eval", str(bad), "--data", str(corpus), "--lengths", "8", "--no-progress")
    assert_one_line_error(code, err, "eval", "more than the model's vocabulary of 256")


@pytest.mark.parametrize("args, needle", [
    (["--lengths", "8,1000000"], "longer than the data"),
    (["--metrics", "ppl_vs_length,bogus"], "metrics"),
    (["--lengths", "8", "--metrics", "passkey", "--passkey-lengths", "64"], "shorter than the prompt"),
    (["--lengths", "8", "--metrics", "effective_remembrance", "--effrem-length", "10000000"], "longer than the data"),
    (["--lengths", "8,x"], "lengths"),
])
def test_bad_eval_arguments_are_one_line_errors(trained, capsys, args, needle):
    _, run, corpus = trained
    code, _, err = run_cli(capsys, "eval", str(run), "--data", str(corpus), "--no-progress", *args)
    assert_one_line_error(code, err, "eval", needle)


def test_bad_plot_and_compare_arguments_are_one_line_errors(capsys, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"name": "a", "ppl_vs_length": {"16": 3.0, "32": 2.5}}))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"ppl_vs_length": {"16": "x"}}))
    existing = tmp_path / "existing.txt"
    existing.write_text("")
    for command, args, needle in (
        ("plot", [str(listed), "--out", str(tmp_path / "p.png")], "not a longssm eval result"),
        ("plot", [str(wrong), "--out", str(tmp_path / "p.png")], "ppl_vs_length.16 must be a number"),
        ("plot", [str(good), "--out", str(tmp_path / "p.txt")], "cannot write a plot"),
        ("compare", [str(good), "--out", str(existing)], "is a file"),
    ):
        code, _, err = run_cli(capsys, command, *args)
        assert_one_line_error(code, err, command, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.txt", "good.json", "list.json", "wrong.json"]


def test_empty_file_and_missing_run_exit_nonzero_without_traceback(trained, tmp_path):
    _, run, _ = trained
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for args, needle in (([str(run), "--data", str(empty)], "empty"), ([str(tmp_path / "nope")], "no such run")):
        proc = subprocess.run([sys.executable, "-m", "longssm", "eval", *args, "--no-progress"], capture_output=True,
                              text=True, env=env, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0], proc.stderr


@pytest.mark.parametrize("state", ["zero", "previous"])
def test_eval_intervals_hold_the_perplexity_and_ci_none_leaves_them_out(trained, tmp_path, state):
    _, run, corpus = trained  # 20,000 bytes: four blocks of 4,096 targets at every length
    cfg = EvalConfig(data=str(corpus), lengths=[16, 256, 4096], max_tokens=16384, state=state, use_cache=False)
    res = evaluate_run(run, cfg, progress=False)
    intervals = res["ppl_interval"]["intervals"]
    assert res["ppl_interval"]["confidence"] == 0.95 and res["ppl_blocks"]["counts"] == [4096.0] * 4
    for L, ppl in res["ppl_vs_length"].items():
        assert intervals[L]["low"] < ppl < intervals[L]["high"] and intervals[L]["blocks"] == 4
        loss = sum(res["ppl_blocks"]["sums"][L]) / 16384  # the blocks add up to the perplexity
        assert math.exp(loss) == pytest.approx(ppl, rel=1e-9)
    assert res["length_extension"]["rule"] == "paired bootstrap"
    wider = evaluate_run(run, dataclasses.replace(cfg, confidence=0.99), progress=False)["ppl_interval"]["intervals"]
    assert all(wider[L]["high"] - wider[L]["low"] > intervals[L]["high"] - intervals[L]["low"] for L in intervals)
    plain = evaluate_run(run, dataclasses.replace(cfg, ci="none"), progress=False)
    assert "ppl_interval" not in plain and "ppl_blocks" not in plain
    assert plain["ppl_vs_length"] == pytest.approx(res["ppl_vs_length"], rel=1e-12)


def test_compare_of_results_on_other_data_is_a_one_line_error(trained, tmp_path, capsys):
    _, run, corpus = trained
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text(encoding="utf-8")[::-1], encoding="utf-8")
    for name, data in (("a", corpus), ("b", other)):
        code, _, err = run_cli(capsys, "eval", str(run), "--data", str(data), "--lengths", "16,64", "--max-tokens",
                               "1024", "--json", str(tmp_path / f"{name}.json"), "--no-progress")
        assert code == 0, err
    code, _, err = run_cli(capsys, "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out",
                           str(tmp_path / "cmp"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "was evaluated on other data than" in lines[0], err
    assert not (tmp_path / "cmp").exists()
