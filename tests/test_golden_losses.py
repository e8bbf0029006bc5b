"""A golden loss curve: a tiny Mamba trained on the CPU gives, step by step, the losses the pre-redesign tree
recorded in ``tests/assets/losses/mamba_tiny_cpu.json`` (so a refactor that changes any number fails here)."""

from __future__ import annotations

import json

import torch

from conftest import REPO
from longssm.config import RunConfig, from_dict
from longssm.train import train

GOLDEN = REPO / "tests" / "assets" / "losses" / "mamba_tiny_cpu.json"


def test_training_reproduces_the_recorded_losses(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    raw = golden["config"]
    raw = {**raw, "data": {**raw["data"], "cache_dir": str(tmp_path / "cache")},
           "train": {**raw["train"], "threads": 1, "log_every": 1}}
    train(from_dict(RunConfig, raw), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == len(golden["losses"]) == raw["train"]["steps"]
    torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64),
                               torch.tensor(golden["losses"], dtype=torch.float64), rtol=1e-5, atol=1e-5)
