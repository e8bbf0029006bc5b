"""Several processes (torchrun, gloo on the CPU): a 2-process run equals a 1-process run with the same global batch,
a killed 2-process run resumes identically, a checkpoint resumes on another number of processes (the streams are
re-partitioned), and sharded evaluation equals single-process evaluation."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import tiny_overrides
from longssm.config import ModelConfig, RunConfig, StateConfig, TrainConfig, from_dict
from longssm.data.streams import Batch
from longssm.distributed import ALONE, Shard, part, stream_slice
from longssm.errors import UserError
from longssm.evaluate.perplexity import ppl_vs_length
from longssm.models import build_model
from longssm.state import StateSchemes
from longssm.train import train

STEPS, EVERY = 60, 4
SHARDED_SCRIPT = r"""
import json, sys

import torch

sys.path.insert(0, sys.argv[1])  # the tests directory
from longssm.distributed import init
from test_distributed import scheme_windows, sharded_eval

shard, device = init(torch.device("cpu"))
result = {"eval": sharded_eval(shard), "schemes": scheme_windows(shard)}
if shard.is_main:
    print("RESULT " + json.dumps(result))
"""
MODEL = {"family": "mamba", "d_model": 16, "n_layers": 1, "d_state": 4, "vocab_size": 256}
SCHEMES = {"random_noise": {"scheme": "random_noise", "noise_std": 0.5}, "fitted_noise": {"scheme": "fitted_noise"},
           "state_passing": {"scheme": "state_passing"}, "previous, p_zero": {"scheme": "previous", "p_zero": 0.5}}


def torchrun(*args: str, nproc: int = 2, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node nproc ...`` in a child process (its own session, one thread each)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def run_config(corpus: Path, cache: Path, **extra) -> dict:
    """A tiny carried-state run with checkpoints every ``EVERY`` steps, all of them kept."""
    return tiny_overrides(corpus, cache, state__scheme="previous", train__steps=STEPS, train__checkpoint_every=EVERY,
                          train__keep_last=STEPS, **extra)


def train_args(config: dict, path: Path, run_dir: Path, *extra: str) -> list[str]:
    path.write_text(yaml.safe_dump(config))
    return ["-m", "longssm", "train", "--config", str(path), "--run-dir", str(run_dir), *extra]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def checkpoint(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """Weights and carried states (prefixed ``states.``) of ``run_dir``'s checkpoint at ``step``."""
    path = run_dir / "checkpoints" / f"step-{step:08d}"
    states = {f"states.{k}": v for k, v in load_file(path / "states.safetensors").items()}
    return {**load_file(path / "model.safetensors"), **states}


def assert_close_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, **tol)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, wiki_text) -> tuple[Path, dict]:
    """A 2-process run (2 accumulation micro-batches per step), trained once for the tests of this module."""
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "corpus.txt").write_text(wiki_text, encoding="utf-8")
    config = run_config(tmp / "corpus.txt", tmp / "cache", train__grad_accum=2)
    proc = torchrun(*train_args(config, tmp / "config.yaml", tmp / "run"))
    assert proc.returncode == 0, proc.stderr
    return tmp / "run", config


def test_two_processes_equal_one_process(two_process_run, tmp_path):
    run2, config = two_process_run
    run1 = tmp_path / "run1"
    one = dict(config, train={**config["train"], "grad_accum": 1})
    train(from_dict(RunConfig, one), run1)
    assert len(losses(run2)) == STEPS  # one record per step: only rank 0 writes
    torch.testing.assert_close(losses(run2), losses(run1), rtol=1e-5, atol=1e-5)
    for step in (EVERY, STEPS):  # every stream's carried state, gathered into one checkpoint
        assert_close_tensors(checkpoint(run2, step), checkpoint(run1, step), rtol=1e-4, atol=1e-5)
    assert yaml.safe_load((run2 / "config.yaml").read_text())["train"]["world_size"] == 2
    assert {json.loads(l).get("world_size") for l in (run2 / "metrics.jsonl").read_text().splitlines()} == {2}


def test_killed_run_resumes_identically(two_process_run, tmp_path):
    reference, config = two_process_run
    run = tmp_path / "run"
    args = train_args(config, tmp_path / "config.yaml", run)
    proc = torchrun(*args, wait=False)
    first = run / "checkpoints" / f"step-{EVERY:08d}" / "meta.json"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers, right after the first checkpoint
    proc.wait()
    assert first.exists() and not (run / "final").exists(), proc.stderr.read()
    resumed = torchrun(*args, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert_close_tensors(checkpoint(run, STEPS), checkpoint(reference, STEPS), rtol=0, atol=0)
    assert losses(run) == losses(reference)


def test_resume_on_another_number_of_processes_repartitions_the_streams(two_process_run, tmp_path, capfd):
    reference, config = two_process_run
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "final")
    for late in sorted((run / "checkpoints").iterdir())[1:]:  # as if stopped after the first checkpoint
        shutil.rmtree(late)
    train(from_dict(RunConfig, config), run, resume="auto")  # 1 process: all 4 streams, their states follow them
    assert "saved by 2 processes, now 1: streams re-partitioned" in capfd.readouterr().err
    torch.testing.assert_close(losses(run), losses(reference), rtol=1e-5, atol=1e-5)
    assert_close_tensors(checkpoint(run, STEPS), checkpoint(reference, STEPS), rtol=1e-4, atol=1e-5)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["world_size"] == 1


def sharded_eval(shard: Shard) -> dict[str, dict[str, float]]:
    """ppl_vs_length of a seeded tiny model at L = 8 and 32 (36 and 9 sequences: split unevenly over 2
    processes), from zero and from carried states."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**MODEL)).eval()
    tokens = np.arange(300) * 7 % 256
    return {state: ppl_vs_length(model, tokens, [8, 32], eval_state=state, shard=shard)
            for state in ("zero", "previous")}


def scheme_windows(shard: Shard, windows: int = 4) -> dict[str, list]:
    """Per scheme of ``SCHEMES``: the initial states of all 4 streams in each window, gathered from every process,
    when each window's final state is a fixed function of its initial state."""
    streams = 4
    own = shard.streams(streams)
    out = {}
    for name, settings in SCHEMES.items():
        schemes = StateSchemes(StateConfig(**settings), {"h": torch.zeros(own.stop - own.start, 3, 2)}, 0, shard)
        inits = []
        for k in range(windows):
            tokens = torch.zeros(streams, 1, dtype=torch.long)
            batch = Batch(tokens, tokens, k, 0, False, torch.zeros(streams, dtype=torch.bool)).rows(own)
            init = schemes.initial(batch)["h"]
            inits.append(shard.gather_rows(init).tolist())
            schemes.observe({"h": init + torch.arange(streams * 6.0).view(streams, 3, 2)[own].mul(k + 1).sin()})
        out[name] = inits
    return out


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory) -> dict:
    """``sharded_eval`` and ``scheme_windows`` run by 2 processes (rank 0's answer)."""
    script = tmp_path_factory.mktemp("sharded") / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    proc = torchrun(str(script), str(Path(__file__).parent))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def test_sharded_evaluation_equals_one_process(two_process_results):
    single = sharded_eval(ALONE)
    for state in ("zero", "previous"):
        assert two_process_results["eval"][state] == pytest.approx(single[state], rel=1e-9)


def test_every_state_scheme_gives_the_one_process_states(two_process_results):
    single = scheme_windows(ALONE)
    for name in SCHEMES:
        torch.testing.assert_close(torch.tensor(two_process_results["schemes"][name]), torch.tensor(single[name]),
                                   msg=name)


def test_streams_are_split_into_equal_contiguous_blocks():
    assert [stream_slice(r, 4, 8) for r in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert [part(r, 2, 9) for r in range(2)] == [slice(0, 4), slice(4, 9)]
    with pytest.raises(UserError, match=re.escape("multiple of train.grad_accum x processes = 3 x 2 = 6")):
        TrainConfig(batch_size=8, grad_accum=3, world_size=2)


def test_accumulation_gives_the_gradient_of_the_whole_batch(tmp_path, corpus_file):
    runs = {}
    for accum in (1, 4):
        config = tiny_overrides(corpus_file, tmp_path / "cache", state__scheme="previous", train__steps=6,
                                train__grad_accum=accum)
        train(from_dict(RunConfig, config), tmp_path / f"accum{accum}")
        runs[accum] = tmp_path / f"accum{accum}"
    torch.testing.assert_close(losses(runs[4]), losses(runs[1]), rtol=1e-5, atol=1e-5)
    assert_close_tensors(checkpoint(runs[4], 6), checkpoint(runs[1], 6), rtol=1e-4, atol=1e-5)
