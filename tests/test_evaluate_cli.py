"""``longssm eval`` / ``compare`` end to end on a tiny trained run: every metric, JSON keys, plots, the cache,
and bad input (one-line error, exit code != 0, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from longssm.cli import main
from longssm.config import load_config
from longssm.train import train

from conftest import tiny_overrides

METRICS = ["ppl_vs_length", "position_ppl", "effective_remembrance", "passkey", "state_stats"]


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


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def eval_all_args(run: Path, corpus: Path, out: Path, plots: Path) -> list[str]:
    return ["eval", str(run), "--data", str(corpus), "--metrics", ",".join(METRICS), "--lengths", "8,16,64",
            "--max-tokens", "640", "--json", str(out), "--plots", str(plots), "--effrem-length", "32",
            "--effrem-sequences", "2", "--passkey-lengths", "256", "--passkey-trials", "1", "--passkey-depths", "0,1",
            "--chunk", "16", "--no-progress"]


def test_eval_every_metric_writes_json_markdown_plots_and_caches(trained, capsys):
    root, run, corpus = trained
    out, plots = root / "all.json", root / "plots"
    code, stdout, err = run_cli(capsys, *eval_all_args(run, corpus, out, plots))
    assert code == 0, err
    res = json.loads(out.read_text())
    for key in METRICS + ["train_seq_len", "scheme", "family", "name"]:
        assert key in res, key
    assert (res["train_seq_len"], res["scheme"], res["family"]) == (8, "previous", "mamba")
    assert list(res["ppl_vs_length"]) == ["8", "16", "64"]
    assert res["settings"]["n_targets"] == 640
    assert res["position_ppl"]["length"] == 64 and res["position_ppl"]["n_sequences"] == 10
    assert res["position_ppl"]["ppl"] == pytest.approx(res["ppl_vs_length"]["64"], rel=1e-6)
    assert res["effective_remembrance"]["effrem"][0] == 0.0 and res["effective_remembrance"]["T"] == 32
    assert set(res["passkey"]["accuracy"]["256"]) == {"0.0", "1.0"}
    assert res["state_stats"]["positions"][-1] == 64 and "layers.0.ssm" in res["state_stats"]["keys"]
    assert res["length_extension"]["verdict"] in ("strong", "weak", "none")
    assert out.with_suffix(".md").read_text().startswith("| run |")
    assert "**Effective Remembrance**" in stdout
    for name in ("ppl_vs_length", "position_ppl", "effective_remembrance", "passkey", "state_stats"):
        assert (plots / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (plots / f"{name}.csv").stat().st_size > 0
    assert res["cache"]["misses"] > 0

    again = root / "again.json"  # same checkpoint and data: everything comes from <run>/eval_cache
    code, _, err = run_cli(capsys, *eval_all_args(run, corpus, again, root / "plots2"))
    assert code == 0, err
    res2 = json.loads(again.read_text())
    assert res2["cache"]["misses"] == 0 and res2["cache"]["hits"] == res["cache"]["misses"]
    for key in METRICS:
        assert res2[key] == res[key], key


def test_carried_state_option_and_compare(trained, capsys, tmp_path):
    root, run, corpus = trained
    zero, prev = tmp_path / "zero.json", tmp_path / "prev.json"
    base = ["eval", str(run), "--data", str(corpus), "--lengths", "8,32,128", "--max-tokens", "1024", "--no-progress",
            "--no-cache"]
    assert run_cli(capsys, *base, "--json", str(zero))[0] == 0
    code, _, err = run_cli(capsys, *base, "--json", str(prev), "--state", "previous", "--order", "shuffled")
    assert code == 0, err
    a, b = json.loads(zero.read_text()), json.loads(prev.read_text())
    assert b["settings"]["eval_state"] == "previous" and a["ppl_vs_length"] != b["ppl_vs_length"]
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
    assert all(r["length_extension"]["verdict"] in ("strong", "weak", "none", "n/a") for r in summary["runs"])
    assert "verdict" in stdout


def assert_one_line_error(code: int, err: str, needle: str) -> None:
    assert code != 0
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("longssm eval: error:"), err
    assert needle in lines[0], lines[0]


def test_vocab_mismatch_is_a_one_line_error(trained, capsys, tmp_path):
    root, run, corpus = trained
    bad = tmp_path / "bad"
    (bad / "final").mkdir(parents=True)
    for f in (run / "final").iterdir():
        (bad / "final" / f.name).write_bytes(f.read_bytes())
    cfg = yaml.safe_load((bad / "final" / "config.yaml").read_text())
    cfg["data"]["tokenizer"] = "gpt2"  # 50257 tokens, the checkpoint has 256
    (bad / "final" / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli(capsys, "eval", str(bad), "--data", str(corpus), "--lengths", "8", "--no-progress")
    assert_one_line_error(code, err, "do not match")


@pytest.mark.parametrize("args, needle", [
    (["--lengths", "8,1000000"], "longer than the data"),
    (["--metrics", "ppl_vs_length,bogus"], "--metrics"),
    (["--lengths", "8", "--metrics", "passkey", "--passkey-lengths", "64"], "shorter than the prompt"),
    (["--lengths", "8", "--metrics", "effective_remembrance", "--effrem-length", "10000000"], "longer than the data"),
    (["--lengths", "8,x"], "--lengths"),
])
def test_bad_eval_arguments_are_one_line_errors(trained, capsys, args, needle):
    root, run, corpus = trained
    code, _, err = run_cli(capsys, "eval", str(run), "--data", str(corpus), "--no-progress", *args)
    assert_one_line_error(code, err, needle)


def test_empty_file_and_missing_run_exit_nonzero_without_traceback(trained, tmp_path):
    root, run, corpus = trained
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for args, needle in (([str(run), "--data", str(empty)], "empty"), ([str(tmp_path / "nope")], "no such run")):
        proc = subprocess.run([sys.executable, "-m", "longssm", "eval", *args, "--no-progress"], capture_output=True,
                              text=True, env=env, timeout=120)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and needle in lines[0], proc.stderr
