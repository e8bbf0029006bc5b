"""The training engine: resume bit-identity, atomic checkpoints, the non-finite guard, token budgets."""

from __future__ import annotations

import json
import math

import pytest
import torch

from longssm import checkpoint as ckpt_io
from longssm import train as train_mod
from longssm.config import from_dict, RunConfig
from longssm.errors import UserError
from longssm.train import lr_at, train

from conftest import tiny_overrides


def cfg_of(corpus, cache, **extra) -> RunConfig:
    return from_dict(RunConfig, tiny_overrides(corpus, cache, **extra))


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("scheme", ["previous", "fitted_noise", "state_passing"])
def test_resumed_run_continues_bit_identically(tmp_path, corpus_file, scheme):
    cfg = cfg_of(corpus_file, tmp_path / "cache", state__scheme=scheme, train__checkpoint_every=5, train__steps=12,
                 model__dropout=0.0, state__p_zero=0.3)
    full: dict[int, float] = {}
    train(cfg, tmp_path / "full", on_step=lambda s, l: full.__setitem__(s, l))

    def stop_at_7(step, loss):
        if step == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", on_step=stop_at_7)
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path / "cut")] == ["step-00000005"]
    resumed: dict[int, float] = {}
    train(cfg, tmp_path / "cut", resume="auto", on_step=lambda s, l: resumed.__setitem__(s, l))
    assert sorted(resumed) == list(range(6, 13))
    for step, loss in resumed.items():
        assert loss == full[step], f"step {step}: {loss} != {full[step]}"  # bit-identical, not approximately
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    steps_logged = [json.loads(l)["step"] for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == sorted(steps_logged) and len(steps_logged) == len(set(steps_logged))


def test_checkpoint_holds_every_stream_state_and_prunes(tmp_path, corpus_file):
    cfg = cfg_of(corpus_file, tmp_path / "cache", state__scheme="previous", train__checkpoint_every=3, train__keep_last=2)
    train(cfg, tmp_path / "run")
    kept = [p.name for p in ckpt_io.list_checkpoints(tmp_path / "run")]
    assert kept == ["step-00000009", "step-00000012"]
    states = ckpt_io.load_states(tmp_path / "run" / "checkpoints" / "step-00000012")
    carried = {k for k in states if k.startswith("carried.")}
    assert carried == {"carried.layers.0.conv", "carried.layers.0.ssm"}
    assert states["carried.layers.0.ssm"].shape[0] == cfg.train.batch_size
    model, loaded_cfg, _ = ckpt_io.load_model(tmp_path / "run")
    assert loaded_cfg.model.vocab_size == 256 and loaded_cfg.state.scheme == "previous"


def test_interrupted_save_leaves_the_previous_checkpoint_loadable(tmp_path, corpus_file):
    cfg = cfg_of(corpus_file, tmp_path / "cache", train__checkpoint_every=4, train__steps=4)
    train(cfg, tmp_path / "run")
    good = ckpt_io.latest_checkpoint(tmp_path / "run")
    model, _, _ = ckpt_io.load_model(good)

    def crash(tmp_dir):
        raise Interrupt("power cut before the rename")

    with pytest.raises(Interrupt):
        ckpt_io.save_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000008", model, cfg, 8, before_rename=crash)
    assert ckpt_io.latest_checkpoint(tmp_path / "run") == good  # the half-written one is invisible
    with pytest.raises(Interrupt):  # overwriting an existing checkpoint is just as safe
        ckpt_io.save_checkpoint(good, model, cfg, 4, before_rename=crash)
    ckpt_io.load_model(good)


def test_non_finite_batch_is_skipped_and_training_continues(tmp_path, corpus_file, monkeypatch):
    real_build = train_mod.build_model
    calls = {"n": 0}

    def build_with_poison(config):
        model = real_build(config)
        forward = model.forward

        def poisoned(tokens, state=None):
            calls["n"] += 1
            logits, new_state = forward(tokens, state)
            if calls["n"] == 3:
                logits = logits * float("nan")
            return logits, new_state

        model.forward = poisoned
        return model

    monkeypatch.setattr(train_mod, "build_model", build_with_poison)
    cfg = cfg_of(corpus_file, tmp_path / "cache", state__scheme="previous", train__steps=8)
    losses: dict[int, float] = {}
    summary = train(cfg, tmp_path / "run", on_step=lambda s, l: losses.__setitem__(s, l))
    assert summary["steps"] == 8
    assert math.isnan(losses[3]) and all(math.isfinite(losses[s]) for s in losses if s != 3)
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("skipped") and r["step"] == 3 for r in records)


def test_too_many_non_finite_steps_stop_with_a_clear_error(tmp_path, corpus_file):
    cfg = cfg_of(corpus_file, tmp_path / "cache", train__lr=1e9, train__warmup_steps=0, train__grad_clip=0.0,
                 train__max_bad_steps=2, train__steps=50, train__checkpoint_every=1)
    with pytest.raises(UserError, match="non-finite steps in a row"):
        train(cfg, tmp_path / "run")
    good = ckpt_io.latest_checkpoint(tmp_path / "run")
    assert good is not None
    model, _, _ = ckpt_io.load_model(good)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_token_budget_sets_the_batch_size(tmp_path, corpus_file):
    cfg = cfg_of(corpus_file, tmp_path / "cache", train__batch_size=None, train__tokens_per_step=64, train__steps=2)
    summary = train(cfg, tmp_path / "run")
    assert summary["batch_size"] == 64 // 8


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = from_dict(RunConfig, {"train": {"lr": 1.0, "warmup_steps": 10, "steps": 110, "min_lr_ratio": 0.1}}).train
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    values = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
