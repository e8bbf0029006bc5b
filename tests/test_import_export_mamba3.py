"""``longssm export --format mamba_ssm`` and ``longssm import`` of mamba_ssm's LM layout, Mamba-3 included: a round
trip that reproduces the weights bit for bit and the logits exactly; each exported layer loads with
``strict=True`` into mamba_ssm's own ``Mamba3`` module built from the exported ``ssm_cfg``, and computes our
layer's output (under Triton's interpreter, to bfloat16's precision); what the layout cannot hold is refused."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

os.environ["TRITON_INTERPRET"] = "1"

from conftest import tiny_overrides
from longssm import cli
from longssm.checkpoint import load_model, read_config, read_weights
from longssm.config import load_config
from longssm.convert import export_mamba_ssm, import_checkpoint
from longssm.errors import UserError
from longssm.train import train
from mamba_ssm_cpu import interpreted

TOKENS = torch.randint(0, 256, (2, 19), generator=torch.Generator().manual_seed(0))


def trained(tmp_path, corpus_file, name: str, **model) -> object:
    overrides = {f"model__{k}": v for k, v in model.items()}
    cfg = load_config(None, tiny_overrides(corpus_file, tmp_path / "cache", train__steps=3, **overrides))
    train(cfg, tmp_path / name)
    return tmp_path / name


def logits(run) -> torch.Tensor:
    model, _, _ = load_model(run)
    with torch.no_grad():
        return model(TOKENS)[0]


@pytest.mark.parametrize("family, extra", [("mamba3", {"d_state": 8, "head_dim": 8}), ("mamba2", {"head_dim": 8}),
                                           ("mamba", {})])
def test_export_then_import_is_bit_exact(tmp_path, corpus_file, family, extra):
    run = trained(tmp_path, corpus_file, "run", family=family, **extra)
    out = export_mamba_ssm(run, tmp_path / "exported")
    config = json.loads((out / "config.json").read_text())
    assert config["ssm_cfg"]["layer"] == {"mamba": "Mamba1", "mamba2": "Mamba2", "mamba3": "Mamba3"}[family]
    assert "backbone.embedding.weight" in load_file(str(out / "model.safetensors"))
    again = import_checkpoint(out, tmp_path / "again", tokenizer="byte")
    first = read_weights(run / "final" / "model.safetensors")
    second = read_weights(again / "final" / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert read_config(again / "final").model == read_config(run / "final").model
    assert torch.equal(logits(again), logits(run))
    assert json.loads((again / "source.json").read_text())["format"] == "mamba_ssm"


@pytest.mark.slow
def test_exported_mamba3_layers_load_into_mamba_ssm_modules_and_compute_ours(tmp_path, corpus_file):
    run = trained(tmp_path, corpus_file, "run", family="mamba3", d_model=32, d_state=16, head_dim=16, n_layers=2)
    out = export_mamba_ssm(run, tmp_path / "exported")
    ssm_cfg = dict(json.loads((out / "config.json").read_text())["ssm_cfg"])
    del ssm_cfg["layer"]
    weights = load_file(str(out / "model.safetensors"))
    model, cfg, _ = load_model(run)
    with interpreted(["mamba_ssm.modules.mamba3"], mamba3_shims=True) as (module,):
        for i, block in enumerate(model.backbone.layers):
            theirs = module.Mamba3(d_model=cfg.model.d_model, **ssm_cfg)
            prefix = f"backbone.layers.{i}.mixer."
            theirs.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)},
                                   strict=True)
            u = torch.randn(2, 21, cfg.model.d_model, generator=torch.Generator().manual_seed(i))
            with torch.no_grad():
                expected = theirs(u)
                ours, _ = block.mixer(u, {k: torch.zeros(2, *s) for k, s in block.mixer.state_shapes().items()})
            assert ((ours - expected).norm() / expected.norm()).item() < 3e-2, i


def test_what_the_layout_cannot_hold_is_refused(tmp_path, corpus_file, capsys):
    gru = trained(tmp_path, corpus_file, "gru", family="gru")
    with pytest.raises(UserError, match="--format mamba_ssm writes mamba, mamba2 and mamba3 models; this run is gru"):
        export_mamba_ssm(gru, tmp_path / "out")
    mlp = trained(tmp_path, corpus_file, "mlp", family="mamba3", d_state=8, head_dim=8, mlp_expand=2)
    assert cli.main(["export", str(mlp), "--out", str(tmp_path / "out"), "--format", "mamba_ssm"]) == 2
    assert "MLP sublayer" in capsys.readouterr().err
    assert cli.main(["export", str(mlp), "--out", str(tmp_path / "out")]) == 2  # no Hugging Face class for Mamba-3
    assert "export it with --format mamba_ssm" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    run = trained(tmp_path, corpus_file, "m3", family="mamba3", d_state=8, head_dim=8)
    out = export_mamba_ssm(run, tmp_path / "mimo")
    config = json.loads((out / "config.json").read_text())
    config["ssm_cfg"]["is_mimo"] = True
    (out / "config.json").write_text(json.dumps(config))
    assert cli.main(["import", str(out), "--out", str(tmp_path / "imported"), "--tokenizer", "byte"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is_mimo=True is not supported" in err[0], err
    assert not (tmp_path / "imported").exists()
