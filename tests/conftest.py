"""Shared fixtures: a small real text corpus cut from the shipped WikiText slice, and tiny run configs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from longssm.paths import resolve_path

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: one thread each, for its own torch and for its child processes
    # (a worker's tests and the other worker's would otherwise share the cores, each asking for all of them)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def user_cache_dir(tmp_path_factory) -> Path:
    """The tests' own user cache directory ($LONGSSM_CACHE_DIR, inherited by every child process): nothing a test
    runs writes into the real ~/.cache/longssm."""
    path = tmp_path_factory.mktemp("user_cache")
    os.environ["LONGSSM_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def wiki_text() -> str:
    """The first ~60 KB of the shipped WikiText-103 training slice (several whole articles)."""
    text = resolve_path("builtin:wikitext-103/wiki.train.prefix.tokens").read_text(encoding="utf-8")
    return text[:60_000]


def tiny_workdir(tmp_path_factory, wiki_text: str, name: str) -> Path:
    """A new directory ``name`` holding ``corpus.txt``, the first 20 KB of ``wiki_text``: for tests that train tiny
    runs in child processes (``tiny_train_args``)."""
    root = tmp_path_factory.mktemp(name)
    (root / "corpus.txt").write_text(wiki_text[:20_000], encoding="utf-8")
    return root


@pytest.fixture()
def corpus_file(tmp_path: Path, wiki_text: str) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(wiki_text, encoding="utf-8")
    return path


def tiny_overrides(corpus: Path, cache: Path, **extra) -> dict:
    """A config dict for a ~10k-parameter Mamba trained for a few steps on ``corpus``."""
    cfg = {
        "name": "tiny",
        "model": {"family": "mamba", "d_model": 16, "n_layers": 1, "d_state": 4},
        "data": {"train": str(corpus), "valid": str(corpus), "tokenizer": "byte", "cache_dir": str(cache)},
        "train": {"seq_len": 8, "batch_size": 4, "steps": 12, "lr": 3e-3, "warmup_steps": 2, "log_every": 1,
                  "progress": False, "threads": 1},
    }
    for dotted, value in extra.items():
        section, key = dotted.split("__")
        cfg.setdefault(section, {})[key] = value
    return cfg


def cli_environment() -> dict[str, str]:
    """The environment of a command-line child: one CPU thread, and none of the ``TRITON_INTERPRET=1`` that the
    kernel tests set in this process (a user's shell does not have it)."""
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"OMP_NUM_THREADS": "1"}


def longssm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real command line in a child process (``cli_environment``)."""
    env = cli_environment()
    return subprocess.run([sys.executable, "-m", "longssm", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def tiny_train_args(corpus: Path, cache: Path, run_dir: Path, *extra: str) -> list[str]:
    """``longssm train`` arguments for a tiny Mamba trained for 6 steps on ``corpus``."""
    return ["train", "--run-dir", str(run_dir), "--no-progress",
            "--data.train", str(corpus), "--data.valid", str(corpus),
            "--data.cache_dir", str(cache), "--model.d_model", "16", "--model.n_layers", "1", "--model.d_state", "4",
            "--train.seq_len", "8", "--train.batch_size", "4", "--train.steps", "6", "--train.warmup_steps", "1",
            *extra]


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str, code: int | None = None) -> None:
    """A non-zero exit (``code`` when given), no traceback, and one stderr line: an error that contains ``needle``."""
    assert proc.returncode != 0 and proc.returncode == (code if code is not None else proc.returncode), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "error" in lines[0], proc.stderr
    assert needle in lines[0], lines[0]


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest): compare before and after to prove nothing
    was written, deleted or changed."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


FORK_SERVER = r"""
import json, os, runpy, sys, traceback

# what the commands import (torch, matplotlib, ...), once; each command runs in a fresh fork
import longssm.cli, longssm.cli_options, longssm.evaluate.run, longssm.train

for line in sys.stdin:
    argv, stdout, stderr = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.argv = ["longssm", *argv]
        try:  # what `python -m longssm` does, down to how the interpreter reports an uncaught exception
            runpy.run_module("longssm", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class ForkedCli:
    """Runs ``python -m longssm ARGS`` in a child process forked from a server that imported torch once, so a
    command that fails early costs milliseconds, not the second or two of starting Python and torch. One command
    at a time; returns what ``longssm()`` returns."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        env = cli_environment()
        self.server = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, env=env)

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        out, err = self.workdir / "stdout", self.workdir / "stderr"
        self.server.stdin.write(json.dumps([list(args), str(out), str(err)]) + "\n")
        self.server.stdin.flush()
        code = int(self.server.stdout.readline())
        return subprocess.CompletedProcess(["longssm", *args], code, out.read_text(), err.read_text())

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


@pytest.fixture(scope="module")
def fla_ops():
    """fla's package (``fla-core`` / ``flash-linear-attention``), imported with transformers' auto registries kept as
    they were: importing fla registers its own classes under model types such as "mamba", which would change what
    ``AutoModelForCausalLM`` builds for the other tests of the same worker. Skips when fla is not installed."""
    import warnings

    auto_config = pytest.importorskip("transformers.models.auto.configuration_auto")
    auto_model = pytest.importorskip("transformers.models.auto.modeling_auto")
    mappings = [auto_config.CONFIG_MAPPING, auto_model.MODEL_MAPPING, auto_model.MODEL_FOR_CAUSAL_LM_MAPPING]
    saved = [dict(m._extra_content) for m in mappings]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Triton is not supported on current platform")
        fla = pytest.importorskip("fla")
    yield fla
    for mapping, content in zip(mappings, saved):
        mapping._extra_content.clear()
        mapping._extra_content.update(content)
