"""Defaults that do not surprise (issue 20): caches go to the user's cache directory, never the working directory;
``plot`` and ``compare`` tell apart runs whose labels collide; ``plot`` leaves out perplexities that are not finite,
with a warning; ``generate`` prints the continuation and one newline at most.

The cache tests run ``python -m longssm`` in a fresh temporary working directory with ``HOME`` and
``XDG_CACHE_HOME`` pointing at temporary directories, so that whatever lands outside the run directory is seen; the
others (absolute paths only) run the command line forked from a server that imported torch once (``ForkedCli``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ForkedCli
from longssm.evaluate.report import with_unique_labels
from longssm.evaluate.run import default_cache_dir
from longssm.paths import CACHE_DIR_ENV, user_cache_dir


@dataclass(frozen=True)
class Home:
    """A working directory, a home and an XDG cache directory of their own, and a tiny run trained there."""

    cwd: Path
    home: Path
    xdg: Path
    corpus: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != CACHE_DIR_ENV}
        return {**env, "HOME": str(self.home), "XDG_CACHE_HOME": str(self.xdg), "OMP_NUM_THREADS": "1", **extra}

    def longssm(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        """``python -m longssm ARGS`` here; stdout and stderr as UTF-8 text, newlines untranslated."""
        proc = subprocess.run([sys.executable, "-m", "longssm", *args], cwd=self.cwd, env=self.env(**env),
                              capture_output=True, timeout=300)
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    forked = ForkedCli(tmp_path_factory.mktemp("cli"))
    yield forked
    forked.close()


def entries(root: Path) -> set[str]:
    """Every path under ``root``, relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def home(tmp_path_factory, wiki_text) -> Home:
    root = tmp_path_factory.mktemp("safe_defaults")
    made = Home(root / "cwd", root / "home", root / "xdg", root / "corpus.txt")
    for d in (made.cwd, made.home, made.xdg):
        d.mkdir()
    made.corpus.write_text(wiki_text[:20_000], encoding="utf-8")
    proc = made.longssm("train", "--run-dir", "runs/tiny", "--no-progress", "--data.train", str(made.corpus),
                        "--data.valid", str(made.corpus), "--model.d_model", "16", "--model.n_layers", "1",
                        "--model.d_state", "4", "--train.seq_len", "8", "--train.batch_size", "4", "--train.steps",
                        "4", "--train.warmup_steps", "1", "--train.checkpoint_every", "2")
    assert proc.returncode == 0, proc.stderr
    return made


def test_training_caches_tokens_in_xdg_cache_home_and_leaves_the_cwd_alone(home):
    assert {p.split("/")[0] for p in entries(home.cwd)} == {"runs"}
    assert {p.split("/")[1] for p in entries(home.cwd) if p.count("/")} == {"tiny"}
    assert list((home.xdg / "longssm").glob("*/train/tokens-00000.bin")), entries(home.xdg)
    assert not (home.home / ".cache" / "longssm").exists()
    saved = (home.cwd / "runs" / "tiny" / "config.yaml").read_text()
    assert "cache_dir: null" in saved  # resolved where it is used, so the run works for another user too


def test_eval_honours_longssm_cache_dir_and_keeps_its_cache_in_the_run(home, tmp_path):
    before = entries(home.cwd) - {p for p in entries(home.cwd) if "eval_cache" in p}
    proc = home.longssm("eval", "runs/tiny/final", "--lengths", "16", "--no-progress", LONGSSM_CACHE_DIR=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.glob("*/train/tokens-00000.bin")), "the validation tokens were not in $LONGSSM_CACHE_DIR"
    assert list((home.cwd / "runs" / "tiny" / "eval_cache").rglob("*.json"))
    after = entries(home.cwd)
    assert {p for p in after - before if not p.startswith("runs/tiny/eval_cache")} == set()


def test_eval_of_a_checkpoint_outside_a_run_caches_in_the_user_cache(home, tmp_path):
    shutil.copytree(home.cwd / "runs" / "tiny" / "final", home.cwd / "lone")
    try:
        proc = home.longssm("eval", "lone", "--lengths", "16", "--no-progress", LONGSSM_CACHE_DIR=str(tmp_path))
        assert proc.returncode == 0, proc.stderr
        assert not (home.cwd / "eval_cache").exists(), "the checkpoint's eval cache landed in the working directory"
        assert list((tmp_path / "eval_cache").rglob("*.json"))
    finally:
        shutil.rmtree(home.cwd / "lone")


def test_user_cache_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert user_cache_dir() == tmp_path / "h" / ".cache" / "longssm"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert user_cache_dir() == tmp_path / "h" / ".cache" / "longssm"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert user_cache_dir() == tmp_path / "x" / "longssm"
    monkeypatch.setenv(CACHE_DIR_ENV, "")
    assert user_cache_dir() == tmp_path / "x" / "longssm"
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert user_cache_dir() == tmp_path / "mine"


def test_default_eval_cache_dir(home, monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    run = home.cwd / "runs" / "tiny"
    assert default_cache_dir(run) == run / "eval_cache"
    assert default_cache_dir(run / "final") == run / "eval_cache"
    step = next((run / "checkpoints").glob("step-*"))
    assert default_cache_dir(step) == run / "eval_cache"
    monkeypatch.chdir(run)
    assert default_cache_dir("final") == Path(".") / "eval_cache"  # the working directory is the run here
    lone = tmp_path / "elsewhere" / "final"
    shutil.copytree(run / "final", lone)
    assert default_cache_dir(lone) == tmp_path / "eval_cache"  # no run around it


def result(run: str, ppl: dict[str, float], name: str = "run") -> dict:
    return {"ppl_vs_length": ppl, "train_seq_len": 8, "name": name, "run": run, "family": "mamba",
            "scheme": "previous"}


def test_labels_that_collide_are_made_unique():
    a, b = result("/x/runs/a", {"8": 3.0}), result("/x/runs/b/final", {"8": 2.0})
    step = result("/x/runs/b/checkpoints/step-00000004", {"8": 2.5})
    other = result("/x/runs/c", {"8": 4.0}, name="other")
    labels = [r["label"] for r in with_unique_labels([a, b, step, other])]
    assert labels == ["a (mamba, previous)", "b (mamba, previous)", "b/step-00000004 (mamba, previous)",
                      "other (mamba, previous)"]
    same = [r["label"] for r in with_unique_labels([a, a], ["evals/one.json", "evals/two.json"])]
    assert same == ["evals/one (mamba, previous)", "evals/two (mamba, previous)"]
    assert [r["label"] for r in with_unique_labels([a, a])] == ["a (mamba, previous) #1", "a (mamba, previous) #2"]
    once = with_unique_labels([a, b])
    assert with_unique_labels(once) == once


def test_plot_and_compare_label_runs_by_directory_when_names_collide(cli, tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(result("/x/runs/a", {"8": 3.0, "16": 2.9})))
    (tmp_path / "b.json").write_text(json.dumps(result("/x/runs/b", {"8": 3.1, "16": 3.0})))
    proc = cli("plot", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "p.png"))
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "p.csv") as f:
        assert {row["run"] for row in csv.DictReader(f)} == {"a (mamba, previous)", "b (mamba, previous)"}
    proc = cli("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr
    runs = json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"]
    assert [r["label"] for r in runs] == ["a (mamba, previous)", "b (mamba, previous)"]
    assert "| a (mamba, previous) |" in proc.stdout and "| b (mamba, previous) |" in proc.stdout


def test_plot_leaves_out_perplexities_that_are_not_finite_with_one_warning(cli, tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(result("/x/runs/a", {"8": 3.0, "16": float("inf"), "32": 2.8,
                                                                     "64": float("nan")})))
    proc = cli("plot", str(tmp_path / "r.json"), "--out", str(tmp_path / "p.png"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.png").stat().st_size > 0
    warnings = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning:"), proc.stderr
    assert "L=16 (inf)" in warnings[0] and "L=64 (nan)" in warnings[0] and "L=8" not in warnings[0]
    with open(tmp_path / "p.csv") as f:
        assert [(row["length"], float(row["ppl"])) for row in csv.DictReader(f)] == [("8", 3.0), ("32", 2.8)]


def test_generate_prints_the_continuation_and_one_newline_at_most(home, cli):
    from longssm.generate import Sampler, generate_from_run

    run = str(home.cwd / "runs" / "tiny")
    for tokens in ("12", "0"):
        proc = cli("generate", run, "--prompt", "The ", "--max-new-tokens", tokens, "--temperature", "0")
        assert proc.returncode == 0, proc.stderr
        stdout = (cli.workdir / "stdout").read_bytes().decode()  # as written: no newline translated
        text = generate_from_run(run, "The ", int(tokens), Sampler(0.0), device="cpu")
        assert stdout == (text if not text or text.endswith("\n") else text + "\n")
        assert proc.stderr == ""
