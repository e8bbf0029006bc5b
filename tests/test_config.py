"""Configs are data: every shipped YAML parses and builds; overrides and errors behave."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
import yaml

from longssm.config import EvalConfig, RunConfig, StateConfig, TrainConfig, from_dict, load_config
from longssm.errors import UNKNOWN_KEY, ConfigError, UserError
from longssm.evaluate.registry import normalise_metrics
from longssm.models import build_model
from longssm.models.registry import family_names
from longssm.paths import shipped_configs
from longssm.quickstart import quickstart_config

CONFIGS = list(shipped_configs().values())


def test_there_are_configs_for_every_family_at_two_sizes():
    names = {p.stem for p in CONFIGS}
    for family in family_names():
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
    with pytest.raises(UserError, match=r"every value of passkey_depths must be in \[0, 1\]"):
        EvalConfig(passkey_depths=[0.5, 2.0])


def test_metric_names_are_normalised_by_the_evaluation_registry():
    assert normalise_metrics(["all"])[0] == "ppl_vs_length" and len(normalise_metrics(["all"])) == 5
    assert normalise_metrics(["passkey", "ppl_vs_length"]) == ["ppl_vs_length", "passkey"]
    assert EvalConfig(metrics=["passkey", "ppl_vs_length"]).metrics == ["passkey", "ppl_vs_length"]  # as given
    for bad in (["ppl_vs_length", "bogus"], []):
        with pytest.raises(ConfigError) as e:
            normalise_metrics(bad)
        assert e.value.key == "metrics" and e.value.value == bad and "comma-separated subset" in e.value.expected


@pytest.mark.parametrize("build, key, expected, value", [
    (lambda: from_dict(RunConfig, {"train": {"lr": "fast"}}), "train.lr", "a number", "fast"),
    (lambda: from_dict(RunConfig, {"train": {"steps": 5.5}}), "train.steps", "an integer", 5.5),
    (lambda: from_dict(EvalConfig, {"max_tokens": "many"}), "max_tokens", "an integer or null", "many"),
    (lambda: from_dict(EvalConfig, {"lengths": "16,,64"}), "lengths",
     "comma-separated integers such as 16,64,256", "16,,64"),
    (lambda: load_config(None, ["--train.seq_len", "0"]), "train.seq_len", ">= 1", 0),
    (lambda: StateConfig(p_zero=1.5), "state.p_zero", "in [0, 1]", 1.5),
    (lambda: EvalConfig(max_tokens=0), "max_tokens", ">= 1", 0),
    (lambda: from_dict(RunConfig, {"state": {"scheme": "magic"}}), "state.scheme",
     "one of zero, previous, random_noise, fitted_noise, state_passing", "magic"),
    (lambda: from_dict(RunConfig, {"train": {"stepz": 3}}), "train.stepz", UNKNOWN_KEY, 3),
    (lambda: load_config(None, {"modle": {"d_model": 3}}), "modle.d_model", UNKNOWN_KEY, 3),
])
def test_config_errors_carry_the_key_the_expected_type_and_the_value(build, key, expected, value):
    with pytest.raises(ConfigError) as e:
        build()
    assert (e.value.key, e.value.expected, e.value.value) == (key, expected, value)
    assert isinstance(e.value, UserError) and key in str(e.value) and "\n" not in str(e.value)
    shown = e.value.render(lambda k: "--" + k.replace("_", "-"))  # how the command line names the key
    assert ("--" + key.replace("_", "-") in shown) != e.value.unknown


def test_unknown_keys_suggest_the_closest_one():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["--modle.d_model", "3"])
    assert e.value.suggestion == "model.d_model" and str(e.value).endswith("(did you mean model.d_model?)")


def test_text_values_are_coerced_as_yaml_scalars_would_be():
    cfg = load_config(None, ["train.compile=yes", "--model.delta_scale", "[0.5, 2]", "--train.threads", "null",
                             "--data.tokenizer", "123", "--train.lr=1e-3", "--train.compile"])
    assert cfg.train.compile is True and cfg.model.delta_scale == [0.5, 2.0] and cfg.train.threads is None
    assert cfg.data.tokenizer == "123" and cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert from_dict(RunConfig, {"train": {"lr": 1}}).train.lr == 1.0  # an int is a number
    assert from_dict(RunConfig, {"model": None}).model == RunConfig().model  # an empty YAML section
    for data in ({"train": {"steps": None}}, {"train": {"lr": "inf"}}, {"train": {"lr": True}}):
        with pytest.raises(ConfigError):
            from_dict(RunConfig, data)


def test_yaml_files_that_are_not_a_mapping_or_not_yaml(tmp_path):
    (tmp_path / "list.yaml").write_text("- train\n")
    (tmp_path / "bad.yaml").write_text("train:\n  steps: [3\n")
    with pytest.raises(UserError, match=r"list.yaml must hold a mapping \(model:, state:, data:, train: ...\)"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(UserError, match=r"bad.yaml is not valid YAML: .* \(line 3, column 1\)"):
        load_config(tmp_path / "bad.yaml")


def test_the_config_module_imports_no_torch_registry_or_cli(tmp_path):
    code = ("import sys; import longssm.config as c; c.RunConfig(); c.EvalConfig(); c.load_config('mamba_tiny'); "
            "c.from_dict(c.RunConfig, {'model': {'family': 'no_such_family'}}); "
            "print(sorted(m for m in sys.modules if m in ('torch', 'jsonargparse', 'longssm.models', 'longssm.cli', "
            "'longssm.cli_options', 'longssm.evaluate', 'longssm.data')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.split() == ["[]"], out.stdout


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
