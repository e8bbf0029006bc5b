"""Crash safety with real processes: Ctrl-C saves the current step, SIGKILL anywhere (a checkpoint write included)
leaves a loadable checkpoint, ``--resume auto`` then continues bit-identically (weights and carried states equal to
an uninterrupted run) and skips damaged checkpoints with a warning, a full disk fails cleanly, and a diverging run
stops with its last good checkpoint intact."""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_one_line_error, file_hashes, longssm, tiny_train_args, tiny_workdir
from longssm import checkpoint as ckpt_io

STEPS = "200"  # long enough that every interruption below lands mid-run

pytestmark = pytest.mark.slow  # every test trains in child processes (4 to 10 s each)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, wiki_text) -> Path:
    return tiny_workdir(tmp_path_factory, wiki_text, "crash")


def args(root: Path, run: str, *extra: str) -> list[str]:
    """Tiny training into ``root/run``: a checkpoint every step (so kills land in writes), the carrying scheme."""
    return tiny_train_args(root / "corpus.txt", root / "cache", root / run, "--train.steps", STEPS,
                           "--train.checkpoint_every", "1", "--train.log_every", "1", "--state.scheme", "previous",
                           *extra)


def start(root: Path, run: str, *extra: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "longssm", *args(root, run, *extra)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **popen)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll ``condition()`` (every millisecond) until it holds; fails if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended first: {proc.communicate()[1]}"
        assert time.monotonic() < deadline
        time.sleep(0.001)


def training(run_dir: Path) -> bool:
    """The run has logged a step (it is past its start-up)."""
    metrics = run_dir / "metrics.jsonl"
    return metrics.is_file() and metrics.stat().st_size > 0


def metrics_file(run_dir: Path) -> tuple[int, int] | None:
    """(inode, size) of the run's metrics.jsonl, None while there is none."""
    try:
        st = (run_dir / "metrics.jsonl").stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size


def training_since(run_dir: Path, before: tuple[int, int] | None) -> bool:
    """A process started when metrics.jsonl was ``before`` is past its start-up: it has logged a step, or (a
    resumed run) rewritten the log to its checkpoint's step, which only happens after the imports and the setup.
    Without this a resumed run's old log says "training" at once, and a signal could land during Python's own
    start-up, before any of longssm's code runs."""
    now = metrics_file(run_dir)
    return now is not None and now[1] > 0 and now != before


def writing_checkpoint(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(p.name.startswith(".tmp-") for p in ckpts.iterdir())


def writing_another_checkpoint(run_dir: Path) -> bool:
    """A checkpoint is being written and an older one is complete."""
    return writing_checkpoint(run_dir) and ckpt_io.latest_checkpoint(run_dir) is not None


def assert_loadable(run_dir: Path) -> Path:
    """The newest complete checkpoint reads whole (weights, trainer state, carried states)."""
    latest = ckpt_io.latest_checkpoint(run_dir)
    assert latest is not None
    ckpt_io.read_training_checkpoint(latest)
    return latest


def assert_same_run(a: Path, b: Path) -> None:
    """Equal final weights and equal carried states at the last step, bit for bit."""
    for rel in ("final/model.safetensors", f"checkpoints/step-{int(STEPS):08d}/states.safetensors"):
        x, y = load_file(str(a / rel)), load_file(str(b / rel))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), rel


@pytest.fixture(scope="module")
def reference(workdir) -> Path:
    """The same training, never interrupted."""
    proc = longssm(*args(workdir, "reference"))
    assert proc.returncode == 0, proc.stderr
    return workdir / "reference"


@pytest.mark.parametrize("sig,code,said", [(signal.SIGINT, 130, "interrupted"),
                                           (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_a_stop_signal_saves_the_current_step_and_resume_is_bit_identical(workdir, reference, sig, code, said):
    """Ctrl-C, or SIGTERM (a scheduler's preemption): the step in flight is saved, one line says where, the exit
    code is the shell's for that signal, and resuming gives the uninterrupted run bit for bit."""
    name = f"stopped-{sig.name}"
    run = workdir / name
    proc = start(workdir, name)
    wait_for(lambda: training(run), proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and f"{said}; saved" in lines[0] and "--resume auto" in lines[0], stderr
    saved = Path(lines[0].split("saved ")[1].split(";")[0])
    step = int(saved.name.removeprefix("step-"))
    assert 0 < step < int(STEPS) and saved == assert_loadable(run)

    proc = longssm(*args(workdir, name, "--resume", "auto"))
    assert proc.returncode == 0, proc.stderr
    assert f"resumed from {saved} at step {step}" in proc.stderr
    assert_same_run(run, reference)


def test_kills_anywhere_leave_a_loadable_checkpoint_and_resume_is_bit_identical(workdir, reference):
    """SIGKILL during a checkpoint write, SIGKILL at random moments, two quick Ctrl-C; each time the newest
    complete checkpoint loads, and the run resumed after all of them equals the uninterrupted one."""
    run, rng = workdir / "killed", random.Random(0)
    kills = [("SIGKILL during a checkpoint write", signal.SIGKILL, lambda: writing_another_checkpoint(run), 0.0)]
    kills += [(f"SIGKILL at random {k}", signal.SIGKILL, training_since, rng.uniform(0.0, 0.2)) for k in range(4)]
    kills += [("SIGINT twice", signal.SIGINT, training_since, rng.uniform(0.0, 0.2))]
    removed_partial = False

    def interrupt(name: str, sig: signal.Signals, ready, delay: float) -> None:
        nonlocal removed_partial
        before = metrics_file(run)
        proc = start(workdir, "killed", *(["--resume", "auto"] if run.exists() else []))
        if ready is training_since:
            wait_for(lambda: training_since(run, before), proc)
        else:
            wait_for(ready, proc)
        time.sleep(delay)
        proc.send_signal(sig)
        if sig == signal.SIGINT:
            proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == (-9 if sig == signal.SIGKILL else 130), (name, stderr)
        assert "Traceback" not in stderr, (name, stderr)
        removed_partial |= "left by an interrupted checkpoint write" in stderr
        assert_loadable(run)

    for name, sig, ready, delay in kills:
        # a write can finish between seeing it and the signal arriving: a kill that missed is still a kill anywhere
        # (checked like the others); try again, a few times, until one lands inside a write
        for _ in range(5 if name.startswith("SIGKILL during") else 1):
            interrupt(name, sig, ready, delay)
            if writing_checkpoint(run):
                break
        if name.startswith("SIGKILL during"):
            assert writing_checkpoint(run), "the kill did not land in the write"
    proc = longssm(*args(workdir, "killed", "--resume", "auto"))
    assert proc.returncode == 0, proc.stderr
    assert removed_partial or "left by an interrupted checkpoint write" in proc.stderr
    assert not writing_checkpoint(run)
    assert_same_run(run, reference)


def test_resume_auto_skips_damaged_checkpoints_with_a_warning(workdir):
    run = workdir / "damaged"
    proc = longssm(*tiny_train_args(workdir / "corpus.txt", workdir / "cache", run, "--train.checkpoint_every", "1",
                                    "--train.keep_last", "4"))
    assert proc.returncode == 0, proc.stderr
    ckpts = run / "checkpoints"
    weights = ckpts / "step-00000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated weights
    (ckpts / "step-00000005" / "trainer.pt").write_bytes(b"garbage")  # garbled trainer state
    (ckpts / "step-00000004" / "states.safetensors").unlink()  # a missing file
    proc = longssm(*tiny_train_args(workdir / "corpus.txt", workdir / "cache", run, "--train.checkpoint_every", "1",
                                    "--train.keep_last", "4", "--train.steps", "8", "--resume", "auto"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    warnings = [l for l in proc.stderr.splitlines() if l.startswith("warning")]
    assert len(warnings) == 3, proc.stderr
    for ckpt, what in (("step-00000006", "model.safetensors"), ("step-00000005", "trainer.pt"),
                       ("step-00000004", "states.safetensors")):
        assert any(f"{ckpt}" in w and what in w for w in warnings), (ckpt, proc.stderr)
    assert "resumed from" in proc.stderr and "step-00000003 at step 3" in proc.stderr


def full_disk() -> None:
    """In the child: files may not grow past 16 KB (the weights are 26 KB), and that fails the write with EFBIG
    instead of killing the process with SIGXFSZ."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, 16_384))


def test_a_full_disk_fails_cleanly_and_keeps_the_previous_checkpoint(workdir):
    run = workdir / "disk"
    base = tiny_train_args(workdir / "corpus.txt", workdir / "cache", run, "--train.checkpoint_every", "3")
    assert longssm(*base).returncode == 0
    before = file_hashes(run / "checkpoints")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "longssm", *base, "--train.steps", "9", "--resume", "auto"],
                          capture_output=True, text=True, env=env, preexec_fn=full_disk, timeout=300)
    lines = [l for l in proc.stderr.splitlines() if not l.startswith(("resumed from", "changed on resume"))]
    assert_one_line_error(proc.__class__(proc.args, proc.returncode, proc.stdout, "\n".join(lines)),
                          "cannot write checkpoint", code=1)
    assert "file too large (file size limit)" in proc.stderr and "os error" not in proc.stderr
    assert file_hashes(run / "checkpoints") == before
    assert not list(run.rglob(".tmp-*"))
    assert_loadable(run)


def test_a_diverging_run_is_reported_and_stops_with_its_last_good_checkpoint(workdir):
    run = workdir / "diverging"
    proc = longssm(*tiny_train_args(workdir / "corpus.txt", workdir / "cache", run, "--train.lr", "1e9",
                                    "--train.warmup_steps", "0", "--train.grad_clip", "0", "--train.max_bad_steps", "3",
                                    "--train.checkpoint_every", "1", "--train.steps", "20", "--train.log_every", "1"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "3 non-finite steps in a row at step" in last and "last good checkpoint" in last, last
    skipped = [l for l in proc.stdout.splitlines() + proc.stderr.splitlines() if "step skipped" in l]
    steps = [int(l.split(":")[0].removeprefix("step ")) for l in skipped]  # each skipped step, named
    assert len(steps) == 3 and steps == list(range(steps[0], steps[0] + 3)) and f"at step {steps[-1]} " in last
    good = assert_loadable(run)
    model, _, _ = ckpt_io.load_model(good)
    assert all(torch.isfinite(p).all() for p in model.parameters())
