"""Runs are safe (issue 20), through the real command line with real processes: a resume continues the run with
its own config, changes only what may change (listed, recorded), one process writes a run directory at a time,
``--overwrite`` deletes only what trainings wrote, a finished run is never restarted; the one-line refusals are in
``tests/bad_cases_runs.py``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import file_hashes, longssm, tiny_train_args, tiny_workdir
from longssm.checkpoint import read_weights
from longssm.lock import HOLDER_FILE


@pytest.fixture(scope="module")
def work(tmp_path_factory, wiki_text) -> Path:
    return tiny_workdir(tmp_path_factory, wiki_text, "safe_runs")


def args(work: Path, run: str, *extra: str) -> list[str]:
    return tiny_train_args(work / "corpus.txt", work / "cache", work / run, *extra)


def weights(run: Path) -> dict:
    return read_weights(run / "final" / "model.safetensors")


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(work) -> Path:
    """8 steps in one go with non-default settings (lr, steps, checkpoints every 2, keep 4)."""
    proc = longssm(*args(work, "reference", "--train.steps", "8", "--train.lr", "0.01", "--train.checkpoint_every", "2",
                         "--train.keep_last", "4", "--train.log_every", "1"))
    assert proc.returncode == 0, proc.stderr
    return work / "reference"


def crashed_copy(reference: Path, at: int, name: str) -> Path:
    """``reference`` as a crash after step ``at`` would have left it: later checkpoints and final/ gone, and
    metrics records after ``at`` written (dropped again on resume)."""
    run = reference.parent / name
    shutil.copytree(reference, run)
    shutil.rmtree(run / "final")
    for ckpt in (run / "checkpoints").glob("step-*"):
        if int(ckpt.name[5:]) > at:
            shutil.rmtree(ckpt)
    return run


def test_resume_auto_alone_continues_with_the_runs_own_config(work, reference):
    run = crashed_copy(reference, 4, "crashed")
    proc = longssm("train", "--run-dir", str(run), "--resume", "auto", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stderr and "at step 4" in proc.stderr and "changed on resume" not in proc.stderr
    assert yaml.safe_load((run / "config.yaml").read_text()) == yaml.safe_load(
        (reference / "config.yaml").read_text())
    ref, got = weights(reference), weights(run)
    assert ref.keys() == got.keys() and all(bool((ref[k] == got[k]).all()) for k in ref)  # bit-identical
    assert [r["step"] for r in records(run)] == list(range(1, 9))
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["final_loss"] == records(run)[-1]["loss"]  # the number metrics.jsonl holds
    history = json.loads((run / "run.json").read_text())["history"]
    assert [h["event"] for h in history] == ["start", "resume"] and history[1]["step"] == 4


def test_a_resume_may_change_the_schedule_and_says_so(work, reference):
    run = crashed_copy(reference, 4, "changed")
    proc = longssm("train", "--run-dir", str(run), "--resume", "auto", "--no-progress", "--train.steps", "10",
                   "--train.lr", "0.002")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("changed on resume")]
    assert lines == ["changed on resume: train.steps 8 → 10, train.lr 0.01 → 0.002"], proc.stderr
    changed = json.loads((run / "run.json").read_text())["history"][-1]["changed"]
    assert changed == {"train.steps": [8, 10], "train.lr": [0.01, 0.002]}
    from longssm.config import TrainConfig
    from longssm.train.schedule import lr_at

    tc = TrainConfig(lr=0.002, steps=10, warmup_steps=1)
    for r in records(run)[4:]:  # the learning rate of the steps after the resume follows the new schedule
        assert r["lr"] == pytest.approx(lr_at(r["step"], tc), rel=1e-12)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.002


def test_a_finished_run_resumed_at_its_last_step_is_left_as_it_is(work, reference):
    before = file_hashes(reference)
    proc = longssm("train", "--run-dir", str(reference), "--resume", "auto", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "is finished at step 8" in proc.stderr
    assert file_hashes(reference) == before


def test_a_garbage_line_in_metrics_is_left_out_with_a_warning(work, reference):
    run = crashed_copy(reference, 4, "garbage")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "loss": 1.0\nnot json at all\n')
    proc = longssm("train", "--run-dir", str(run), "--resume", "auto", "--no-progress")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "is not a metrics record; left out" in proc.stderr
    assert [r["step"] for r in records(run)] == list(range(1, 9))


def test_overwrite_deletes_only_what_trainings_wrote(work):
    run = work / "users_dir"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "my_model.pt").write_bytes(b"the user's own file")
    (run / "notes.txt").write_text("mine")
    for _ in range(2):  # a new run beside the user's files, then replaced by --overwrite
        proc = longssm(*args(work, "users_dir", "--overwrite", "--train.checkpoint_every", "3"))
        assert proc.returncode == 0, proc.stderr
    assert "--overwrite keeps" in proc.stderr and "my_model.pt" in proc.stderr
    assert ".longssm-lock.json" not in proc.stderr  # the lock's own file is longssm's, not the user's
    assert (run / "checkpoints" / "my_model.pt").read_bytes() == b"the user's own file"
    assert (run / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["my_model.pt", "step-00000003",
                                                                       "step-00000006"]
    assert [h["event"] for h in json.loads((run / "run.json").read_text())["history"]] == ["overwrite"]


def test_two_trainings_into_one_run_directory_leave_one_valid_run(work):
    run = work / "raced"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "longssm", *args(work, "raced", "--train.steps", "40", "--train.log_every", "1")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    loser = next(err for p, (_, err) in zip(procs, results, strict=True) if p.returncode == 2)
    lines = [line for line in loser.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in loser, loser
    assert "is in use by process" in lines[0] or "already holds" in lines[0], loser
    assert [r["step"] for r in records(run)] == list(range(1, 41))
    assert json.loads((run / "final" / "meta.json").read_text())["step"] == 40
    assert not (run / HOLDER_FILE).exists()
    proc = longssm("eval", str(run), "--lengths", "16", "--max-tokens", "256", "--no-progress")
    assert proc.returncode == 0, proc.stderr


def test_a_busy_run_directory_is_refused_and_a_dead_holder_is_no_obstacle(work):
    run = work / "busy"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    holder = subprocess.Popen([sys.executable, "-m", "longssm", *args(work, "busy", "--train.steps", "100000")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists():
            assert holder.poll() is None and time.monotonic() < deadline, holder.stderr.read()
            time.sleep(0.2)
        before = {name: (run / name).read_bytes() for name in ("config.yaml", "run.json")}
        for extra in (["--overwrite"], ["--resume", "auto"]):
            proc = longssm(*args(work, "busy", *extra))
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
            assert f"is in use by process {holder.pid}" in proc.stderr, proc.stderr
        assert {name: (run / name).read_bytes() for name in before} == before  # neither replaced nor rewritten
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
    assert (run / HOLDER_FILE).exists()  # a process killed with SIGKILL leaves its holder file: only information
    proc = longssm(*args(work, "busy", "--overwrite"))
    assert proc.returncode == 0, proc.stderr
    assert not (run / HOLDER_FILE).exists()


def test_init_from_applies_the_keys_that_do_not_change_the_weights(work, reference):
    proc = longssm(*args(work, "from_ref", "--init-from", str(reference), "--model.scan", "reference",
                         "--train.steps", "2"))
    assert proc.returncode == 0, proc.stderr
    model = yaml.safe_load((work / "from_ref" / "config.yaml").read_text())["model"]
    assert model["scan"] == "reference" and model["d_model"] == 16


def test_eval_says_when_the_tokenizer_does_not_fit_the_model(work, reference):
    run = work / "gpt2_vocab_byte_tokenizer"
    shutil.copytree(reference, run)
    cfg = yaml.safe_load((run / "final" / "config.yaml").read_text())
    cfg["model"]["vocab_size"] = 50280  # a GPT-2-sized model whose config names the byte tokenizer
    (run / "final" / "config.yaml").write_text(yaml.safe_dump(cfg))
    from longssm.checkpoint import save_weights
    from longssm.config import ModelConfig
    from longssm.models import build_model

    save_weights(build_model(ModelConfig(**cfg["model"])), run / "final" / "model.safetensors")
    proc = longssm("eval", str(run), "--lengths", "16", "--max-tokens", "64", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "far fewer than the model's vocabulary of 50280" in proc.stderr


def test_warmup_longer_than_the_run_is_a_warning(work):
    proc = longssm(*args(work, "long_warmup", "--train.warmup_steps", "50", "--train.steps", "2"))
    assert proc.returncode == 0, proc.stderr
    assert "warning: train.warmup_steps=50 is longer than the run" in proc.stderr
