"""Configs are data: every shipped YAML parses and builds; overrides and errors behave."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from longssm.config import RunConfig, from_dict, load_config, load_yaml, parse_overrides
from longssm.errors import UserError
from longssm.models import build_model
from longssm.quickstart import QUICKSTART

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_configs_for_every_family_at_two_sizes():
    names = {p.stem for p in CONFIGS}
    for family in ("mamba", "mamba2", "s5", "gru", "lstm"):
        assert {f"{family}_tiny", f"{family}_small"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_parses_and_builds(path):
    cfg = load_config(path)
    vocab = 256 if cfg.data.tokenizer == "byte" else 50257
    model = build_model(replace(cfg.model, vocab_size=vocab))
    n = sum(p.numel() for p in model.parameters())
    if path.stem.endswith("_tiny"):
        assert n < 1_000_000
    if path.stem.endswith("_small"):
        assert 10_000_000 <= n <= 30_000_000


def test_quickstart_yaml_is_the_quickstart():
    yaml_cfg = load_yaml(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    for section, values in QUICKSTART.items():
        assert yaml_cfg[section] == values


def test_overrides_are_typed_and_dotted():
    data = parse_overrides(["--train.lr", "1e-3", "model.d_model=64", "--train.compile", "true", "--train.batch_size", "null"])
    assert data == {"train": {"lr": 0.001, "compile": True, "batch_size": None}, "model": {"d_model": 64}}
    cfg = load_config(None, ["--train.lr", "1e-3", "--train.tokens_per_step", "512", "--train.batch_size", "null"])
    assert cfg.train.lr == 0.001 and cfg.train.resolved_batch_size == 512 // 16


@pytest.mark.parametrize(
    "data, message",
    [
        ({"model": {"d_modle": 3}}, "unknown config key 'model.d_modle'"),
        ({"train": {"lr": "fast"}}, "train.lr must be a number"),
        ({"train": {"compile": 1}}, "train.compile must be true or false"),
        ({"state": {"p_zero": 2.0}}, "state.p_zero must be in [0, 1]"),
        ({"train": {"seq_len": 0}}, "train.seq_len must be >= 1"),
        ({"model": 3}, "model must be a mapping"),
    ],
)
def test_bad_configs_name_the_key(data, message):
    with pytest.raises(UserError) as e:
        from_dict(RunConfig, data)
    assert message in str(e.value)
