"""Configs are data: every shipped YAML parses and builds; overrides and errors behave."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from longssm.config import EvalConfig, RunConfig, TrainConfig, from_dict, load_config
from longssm.data.paths import shipped_configs
from longssm.errors import UserError
from longssm.models import build_model
from longssm.quickstart import quickstart_config

CONFIGS = list(shipped_configs().values())


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


def test_quickstart_runs_the_shipped_yaml_with_pure_schemes():
    yaml_cfg = yaml.safe_load(shipped_configs()["quickstart"].read_text())
    assert quickstart_config() == yaml_cfg and yaml_cfg["name"] == "quickstart"
    assert from_dict(RunConfig, yaml_cfg).state.zero_start_probability == 0.0  # not the default recipe's 0.1


def test_overrides_are_typed_and_dotted():
    cfg = load_config(None, ["--train.lr", "1e-3", "model.d_model=64", "--train.compile", "true", "--name", "1e3",
                             "--train.tokens_per_step", "512", "--train.batch_size", "null"])
    assert cfg.train.lr == 0.001 and cfg.model.d_model == 64 and cfg.train.compile is True
    assert cfg.name == "1e3"  # a string field stays a string, whatever it looks like
    assert cfg.train.batch_size is None and cfg.train.resolved_batch_size == 512 // 16


def test_config_file_then_overrides_then_dict(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  d_model: 32\ntrain:\n  lr: 0.01\n  steps: 7\n")
    cfg = load_config(path, ["--train.lr", "0.02"])
    assert (cfg.model.d_model, cfg.train.lr, cfg.train.steps) == (32, 0.02, 7)
    assert load_config(path, {"train": {"steps": 9}}).train.steps == 9


def test_shipped_configs_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_name = load_config("mamba_tiny")
    assert load_config("configs/mamba_tiny.yaml") == by_name == load_config("mamba_tiny.yaml")
    assert by_name.model.d_model == yaml.safe_load(shipped_configs()["mamba_tiny"].read_text())["model"]["d_model"]


def test_ranges_are_checked_on_every_construction():
    with pytest.raises(UserError, match=r"train.grad_clip must be >= 0; got -1"):
        TrainConfig(grad_clip=-1.0)
    with pytest.raises(UserError, match=r"every value of --passkey-depths must be in \[0, 1\]"):
        EvalConfig(passkey_depths=[0.5, 2.0])
    assert EvalConfig(metrics=["all"]).metrics[0] == "ppl_vs_length" and len(EvalConfig(metrics=["all"]).metrics) == 5
    assert EvalConfig(metrics=["passkey", "ppl_vs_length"]).metrics == ["ppl_vs_length", "passkey"]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"model": {"d_modle": 3}}, "unknown config key 'model.d_modle' (did you mean model.d_model?)"),
        ({"train": {"lr": "fast"}}, "train.lr must be a number; got 'fast'"),
        ({"train": {"compile": 1}}, "train.compile must be true or false"),
        ({"state": {"p_zero": 2.0}}, "state.p_zero must be in [0, 1]; got 2.0"),
        ({"train": {"seq_len": 0}}, "train.seq_len must be >= 1"),
        ({"train": {"warmup_steps": -5}}, "train.warmup_steps must be >= 0"),
        ({"train": {"checkpoint_every": -1}}, "train.checkpoint_every must be >= 0"),
        ({"state": {"scheme": "magic"}}, "state.scheme must be one of zero, previous"),
    ],
)
def test_bad_configs_name_the_key(data, message):
    with pytest.raises(UserError) as e:
        from_dict(RunConfig, data)
    assert message in str(e.value) and "\n" not in str(e.value)
