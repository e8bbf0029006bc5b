"""A normal (non-editable) install works from any directory: the shipped data and configs are package data."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("longssm-*.whl")
    return path


def test_wheel_holds_data_and_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("longssm/assets/wikitext-103/wiki.train.prefix.tokens",
                   "longssm/assets/wikitext-103/wiki.valid.tokens", "longssm/assets/tokenizers/gpt2/tokenizer.json",
                   "longssm/configs/quickstart.yaml", "longssm/configs/mamba_tiny.yaml"):
        assert needed in names, needed


def test_installed_wheel_trains_from_another_directory(wheel, tmp_path):
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    where = subprocess.run([sys.executable, "-c", "import longssm; print(longssm.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr  # the wheel, not the checkout
    def longssm(*args: str, cwd: Path = work) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "longssm", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=300)

    proc = longssm("train", "--config", "mamba_tiny", "--train.steps", "3", "--train.warmup_steps", "1",
                   "--train.batch_size", "2", "--train.seq_len", "8", "--model.d_model", "16", "--model.n_layers", "1",
                   "--no-progress", "--run-dir", "run")
    assert proc.returncode == 0, proc.stderr
    assert (work / "run" / "final" / "model.safetensors").is_file()
    # the run evaluates from yet another directory: its config holds absolute paths to the shipped data
    proc = longssm("eval", str(work / "run"), "--lengths", "16,64", "--max-tokens", "512", "--no-progress",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "| 16 | 64 |" in proc.stdout
