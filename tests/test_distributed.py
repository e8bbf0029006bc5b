"""Several processes (torchrun, gloo on the CPU): a 2-process run equals a 1-process run with the same global batch,
a killed 2-process run resumes identically, a checkpoint resumes on another number of processes (the streams are
re-partitioned), and sharded evaluation (the API and ``longssm eval``, its cache included) equals single-process
evaluation."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import tiny_overrides
from longssm.config import EvalConfig, ModelConfig, RunConfig, StateConfig, TrainConfig, from_dict
from longssm.data.streams import Batch
from longssm.errors import UserError
from longssm.evaluate.cache import EvalCache
from longssm.evaluate.perplexity import ppl_vs_length
from longssm.evaluate.run import evaluate_run
from longssm.evaluate.state_stats import StateStats
from longssm.models import build_model
from longssm.runtime.distributed import ALONE, Shard, part, stream_slice
from longssm.train import train
from longssm.train.schemes import StateSchemes

STEPS, EVERY = 60, 4
SHARDED_SCRIPT = r"""
import json, sys

import torch

sys.path.insert(0, sys.argv[1])  # the tests directory
from longssm.runtime.distributed import init
from test_distributed import scheme_windows, sharded_eval, sharded_state_stats

shard, device = init(torch.device("cpu"))
result = {"eval": sharded_eval(shard), "schemes": scheme_windows(shard), "state_stats": sharded_state_stats(shard)}
if shard.is_main:
    print("RESULT " + json.dumps(result))
"""
EVAL_SCRIPT = r"""
import json, sys

from longssm.cli import main

for argv in json.loads(sys.argv[1]):  # longssm eval ARGV, one after the other in the same processes
    if code := main(argv):
        sys.exit(code)
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def sharded_state_stats(shard: Shard) -> dict[str, Any]:
    """``StateStats`` at L = 8 of n = 1 and n = 3 rows of fixed states, each process recording its part of the rows
    as the position pass does (2 processes, n = 1: rank 0 records nothing, not even the keys), then combined."""
    out = {}
    for n in (1, 3):
        g = torch.Generator().manual_seed(n)
        states = {"layers.0.conv": torch.randn(n, 4, 3, generator=g), "layers.0.ssm": torch.randn(n, 5, generator=g)}
        stats, mine = StateStats(8), shard.part(n)
        for t in stats.positions if mine.stop > mine.start else []:
            stats(mine, t, {key: h[mine] * t**0.5 for key, h in states.items()})
        stats.all_reduce(shard, list(states))
        out[str(n)] = stats.result(train_seq_len=2).to_json()
    return out


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


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process(two_process_results):
    single = sharded_eval(ALONE)
    for state in ("zero", "previous"):
        assert two_process_results["eval"][state] == pytest.approx(single[state], rel=1e-9)


@pytest.mark.slow
def test_state_stats_combined_over_processes_equal_one_process(two_process_results):
    single = sharded_state_stats(ALONE)
    assert two_process_results["state_stats"]["1"] == single["1"]  # rank 0 saw no rows
    assert numbers(two_process_results["state_stats"]["3"]) == pytest.approx(numbers(single["3"]), rel=1e-12)


@pytest.mark.slow
def test_every_state_scheme_gives_the_one_process_states(two_process_results):
    single = scheme_windows(ALONE)
    for name in SCHEMES:
        torch.testing.assert_close(torch.tensor(two_process_results["schemes"][name]), torch.tensor(single[name]),
                                   msg=name)


EVAL_METRICS = ["ppl_vs_length", "position_ppl", "state_stats", "effective_remembrance", "mqar"]
EVAL_SETTINGS = {"lengths": [8, 32, 128], "max_tokens": 1152, "chunk": 16, "effrem_length": 32,
                 "effrem_sequences": 3, "task_lengths": [128], "task_trials": 3, "mqar_pairs": [2, 3],
                 "task_haystack": "repeat"}
"""N = 1152 targets: 9 sequences of 128 (position pass, L = 128 read off it), 36 of 32 and 144 of 8, 3 EffRem
windows and 3 mqar instances per cell: every split over 2 processes is uneven."""


def eval_args(run: Path, cache: Path, state: str, json_out: Path) -> list[str]:
    """``longssm eval`` arguments: ``run`` with ``EVAL_METRICS`` and ``EVAL_SETTINGS``, cached in ``cache``."""
    options = [f"--{key.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, list) else v}"
               for key, v in EVAL_SETTINGS.items()]
    return ["eval", str(run), "--metrics", ",".join(EVAL_METRICS), *options, "--state", state,
            "--cache-dir", str(cache), "--json", str(json_out), "--no-progress"]


@pytest.fixture(scope="module")
def two_process_evals(two_process_run, tmp_path_factory) -> dict[str, Any]:
    """``longssm eval`` of the trained run by 2 processes, one cache for all three, in this order: zero state (cache
    cold; ``torchrun -m longssm eval``), then, in one torchrun (``EVAL_SCRIPT``), previous state (the position pass
    and EffRem warm, ppl_vs_length cold) and zero state again (all warm). The result JSON of each, and the first
    torchrun's finished process (``"proc"``)."""
    run, _ = two_process_run
    tmp = tmp_path_factory.mktemp("sharded_cli")
    evals = {name: (state, tmp / f"{i}.json")
             for i, (name, state) in enumerate([("zero", "zero"), ("previous", "previous"), ("zero, warm", "zero")])}
    args = {name: eval_args(run, tmp / "cache", state, path) for name, (state, path) in evals.items()}
    proc = torchrun("-m", "longssm", *args["zero"])
    assert proc.returncode == 0, proc.stderr
    (tmp / "evals.py").write_text(EVAL_SCRIPT)
    later = torchrun(str(tmp / "evals.py"), json.dumps([args["previous"], args["zero, warm"]]))
    assert later.returncode == 0, later.stderr
    return {"proc": proc, **{name: json.loads(path.read_text()) for name, (_, path) in evals.items()}}


def numbers(value: Any, where: str = "") -> dict[str, float]:
    """Every number in a parsed JSON value, by its path (``.bins[2].loss``)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in numbers(item, f"{where}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in numbers(item, f"{where}[{i}]").items()}
    return {where: value} if isinstance(value, (int, float)) and not isinstance(value, bool) else {}


@pytest.mark.slow
@pytest.mark.parametrize("state", ["zero", "previous"])
def test_sharded_eval_command_equals_one_process(two_process_run, two_process_evals, state):
    run, _ = two_process_run
    sharded, proc = two_process_evals[state], two_process_evals["proc"]
    threads = torch.get_num_threads()
    try:  # one thread, as each torchrun process has (two on a busy 2-core machine can take 10x longer)
        single = evaluate_run(run, EvalConfig(metrics=EVAL_METRICS, state=state, use_cache=False, threads=1,
                                              **EVAL_SETTINGS), progress=False)
    finally:
        torch.set_num_threads(threads)
    for metric in EVAL_METRICS:
        expected = numbers(single[metric])
        assert numbers(sharded[metric]).keys() == expected.keys(), metric
        assert numbers(sharded[metric]) == pytest.approx(expected, rel=1e-6, abs=1e-12), metric
    assert sharded["settings"] == {**single["settings"], "world_size": 2}
    assert single["settings"]["world_size"] == 1
    if state == "zero":  # the torchrun of this one eval: rank 0 alone reports and writes
        assert proc.stdout.count("| run |") == 1 and proc.stderr.count("wrote ") == 2


@pytest.mark.slow
def test_sharded_eval_hits_are_decided_together(two_process_evals):
    cold, previous, warm = (two_process_evals[name] for name in ("zero", "previous", "zero, warm"))
    # ppl_vs_length at L = 8, 32, 128 (128: read off the position pass), position_ppl, state_stats, EffRem, mqar
    assert (cold["cache"]["hits"], cold["cache"]["misses"]) == (0, 7)
    assert (previous["cache"]["hits"], previous["cache"]["misses"]) == (4, 3)  # only the 3 carried-state lengths
    assert (warm["cache"]["hits"], warm["cache"]["misses"]) == (7, 0)
    for metric in EVAL_METRICS:
        assert warm[metric] == cold[metric], metric
    entries = sorted(Path(cold["cache"]["dir"]).rglob("*"))
    assert len([p for p in entries if p.is_file()]) == 10 and not [p for p in entries if ".tmp" in p.name]


@dataclass(frozen=True)
class PeerMisses(Shard):
    """Rank 1 of 2 whose peer has no entry: ``any`` answers what the all-reduce over both would."""

    def any(self, flag: bool) -> bool:
        return True


def test_cache_entry_is_a_hit_only_when_every_process_has_it(tmp_path):
    alone = EvalCache(tmp_path, "model", "data")
    alone.get_or_compute("ppl_vs_length", 8, {}, lambda: 1.0)  # stored
    before = (tmp_path / "ppl_vs_length").stat().st_mtime_ns, sorted((tmp_path / "ppl_vs_length").iterdir())
    rank1 = EvalCache(tmp_path, "model", "data", shard=PeerMisses(rank=1, world=2))
    assert rank1.get_or_compute("ppl_vs_length", 8, {}, lambda: 2.0) == 2.0  # computed with its peer
    assert (rank1.hits, rank1.misses) == (0, 1)
    assert rank1.get_or_compute("ppl_vs_length", 16, {}, lambda: 3.0) == 3.0  # a miss everywhere
    after = (tmp_path / "ppl_vs_length").stat().st_mtime_ns, sorted((tmp_path / "ppl_vs_length").iterdir())
    assert after == before  # rank 1 writes nothing
    assert EvalCache(tmp_path, "model", "data").get_or_compute("ppl_vs_length", 8, {}, lambda: 4.0) == 1.0


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
