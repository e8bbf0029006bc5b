"""Per-layer Δ / A scales (``model.delta_scale``, ``model.a_scale``) and ``longssm calibrate``."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from conftest import tiny_overrides
from longssm import cli
from longssm.calibrate import calibrate_run
from longssm.checkpoint import load_model, read_weights
from longssm.config import ModelConfig, load_config
from longssm.errors import UserError
from longssm.models import build_model
from longssm.train import train

TINY = dict(vocab_size=50, d_model=16, n_layers=2, d_state=4, head_dim=8, chunk_size=8)
TOKENS = torch.randint(0, 50, (2, 21), generator=torch.Generator().manual_seed(0))


def logits_of(config: ModelConfig, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(config).eval()
    if weights is not None:
        model.load_state_dict(weights)
    with torch.no_grad():
        return model(TOKENS)[0]


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
def test_unit_scales_leave_logits_unchanged_bit_for_bit(family):
    config = ModelConfig(family=family, **TINY)
    unit = replace(config, delta_scale=[1.0, 1.0], a_scale=[1.0, 1.0])
    assert torch.equal(logits_of(unit), logits_of(config))
    assert not torch.equal(logits_of(replace(config, delta_scale=[1.0, 1.5])), logits_of(config))


@pytest.mark.parametrize("family,method", [("mamba", "a_scale"), ("mamba", "delta_scale"), ("mamba2", "a_scale")])
def test_scales_equal_their_folds_into_the_weights(family, method):
    """s_A = A_log + log s; for Mamba-1 s_Δ = the same and the B rows of x_proj times s (Δ enters exp(ΔA) and ΔB)."""
    config = ModelConfig(family=family, **TINY)
    scales = [0.5, 3.0]
    torch.manual_seed(0)
    folded = build_model(config).state_dict()
    for i, s in enumerate(scales):
        prefix = f"backbone.layers.{i}.mixer."
        folded[prefix + "A_log"] = folded[prefix + "A_log"] + math.log(s)
        if method == "delta_scale":
            rank = math.ceil(config.d_model / 16)
            x_proj = folded[prefix + "x_proj.weight"].clone()
            x_proj[rank:rank + config.d_state] *= s
            folded[prefix + "x_proj.weight"] = x_proj
    torch.testing.assert_close(logits_of(replace(config, **{method: scales})), logits_of(config, folded),
                               atol=1e-5, rtol=1e-5)


def test_scales_are_validated():
    with pytest.raises(UserError, match="one value per layer"):
        ModelConfig(family="mamba", n_layers=2, delta_scale=[1.0])
    with pytest.raises(UserError, match="must be > 0"):
        ModelConfig(family="mamba", n_layers=1, a_scale=[0.0])
    with pytest.raises(UserError, match="mamba and mamba2 families only"):
        ModelConfig(family="gru", n_layers=1, a_scale=[2.0])


@pytest.fixture(params=["mamba", "mamba2"])
def trained_run(request, tmp_path, corpus_file):
    extra = {"model__head_dim": 8} if request.param == "mamba2" else {}
    cfg = load_config(None, tiny_overrides(corpus_file, tmp_path / "cache", model__family=request.param,
                                           model__n_layers=2, **extra))
    train(cfg, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("method", ["delta_scale", "a_scale"])
def test_calibration_lowers_the_loss_and_keeps_the_weights(trained_run, corpus_file, tmp_path, method):
    summary = calibrate_run(trained_run, method, target_length=256, data=str(corpus_file), out=tmp_path / "cal",
                            steps=8, lr=0.3, windows=2, chunk=64)
    assert summary["loss_after"] < summary["loss_before"]
    _, cfg, ckpt = load_model(tmp_path / "cal")
    assert getattr(cfg.model, method) == pytest.approx(summary["scales"]) and len(summary["scales"]) == 2
    original = read_weights(trained_run / "final" / "model.safetensors")
    calibrated = read_weights(ckpt / "model.safetensors")
    assert all(torch.equal(original[k], calibrated[k]) for k in original)
    assert json.loads((tmp_path / "cal" / "source.json").read_text())["method"] == method


def test_cli_calibrate_then_eval(trained_run, corpus_file, tmp_path, capsys):
    out = tmp_path / "cal"
    assert cli.main(["calibrate", str(trained_run), "--method", "a_scale", "--target-length", "64", "--data",
                     str(corpus_file), "--out", str(out), "--steps", "1", "--windows", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "a_scale"
    assert cli.main(["eval", str(out), "--lengths", "16,64", "--max-tokens", "512", "--no-progress"]) == 0
    assert cli.main(["calibrate", str(trained_run), "--method", "a_scale", "--target-length", "10000000", "--data",
                     str(corpus_file), "--out", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "none").exists()
