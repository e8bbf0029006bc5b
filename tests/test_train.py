"""The training engine: resume bit-identity, atomic checkpoints, the non-finite guard, token budgets."""

from __future__ import annotations

import copy
import itertools
import json
import math

import pytest
import torch

from conftest import tiny_overrides
from longssm import checkpoint as ckpt_io
from longssm import files
from longssm.config import RunConfig, from_dict
from longssm.data.tokenizer import load_tokenizer
from longssm.errors import UserError
from longssm.runtime.distributed import ALONE
from longssm.train import TrainState, lr_at, train, train_step
from longssm.train import setup as train_setup
from longssm.train.step import StepContext


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


@pytest.mark.parametrize("family,scheme", [("mamba", "previous"), ("s5", "fitted_noise")])
def test_a_train_state_loaded_from_its_state_dict_continues_bit_identically(tmp_path, corpus_file, family, scheme):
    tokenizer, cpu = load_tokenizer("byte"), torch.device("cpu")
    cfg = train_setup.resolve_config(cfg_of(corpus_file, tmp_path / "cache", model__family=family, model__dropout=0.1,
                                            state__scheme=scheme, state__p_zero=0.3), tokenizer)
    # S5's dropout draws from torch's RNG: the state dict must restore it too
    loader, _, _ = train_setup.load_data(cfg, tokenizer)

    def steps(state: TrainState, n: int) -> list[float]:
        ctx = StepContext(state.model, state.model, cpu, torch.autocast("cpu", enabled=False), ALONE,
                          cfg.train.grad_accum, cfg.train.grad_clip)
        return [train_step(state, loader.batch(state.step), ctx).loss.item() for _ in range(n)]

    first = train_setup.new_train_state(cfg, cpu)
    steps(first, 4)
    saved = copy.deepcopy(first.state_dict())
    expected = steps(first, 5)
    resumed = train_setup.new_train_state(cfg, cpu)
    resumed.load_state_dict(saved)
    assert resumed.step == 4 and resumed.bad_in_a_row == 0
    assert steps(resumed, 5) == expected  # bit-identical, not approximately
    a, b = first.state_dict(), resumed.state_dict()
    assert a["trainer"]["step"] == b["trainer"]["step"] == 9
    for part in ("model", "states"):
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    moments = [(x, y) for sx, sy in zip(a["trainer"]["optimizer"]["state"].values(),
                                        b["trainer"]["optimizer"]["state"].values(), strict=True)
               for x, y in zip(sx.values(), sy.values(), strict=True)]
    assert moments and all(torch.equal(x, y) for x, y in moments)


def test_checkpoint_holds_every_stream_state_and_prunes(tmp_path, corpus_file):
    cfg = cfg_of(corpus_file, tmp_path / "cache", state__scheme="previous", train__checkpoint_every=3,
                 train__keep_last=2)
    train(cfg, tmp_path / "run")
    kept = [p.name for p in ckpt_io.list_checkpoints(tmp_path / "run")]
    assert kept == ["step-00000009", "step-00000012"]
    states = ckpt_io.load_states(tmp_path / "run" / "checkpoints" / "step-00000012")
    carried = {k for k in states if k.startswith("carried.")}
    assert carried == {"carried.layers.0.conv", "carried.layers.0.ssm"}
    assert states["carried.layers.0.ssm"].shape[0] == cfg.train.batch_size
    _, loaded_cfg, _ = ckpt_io.load_model(tmp_path / "run")
    assert loaded_cfg.model.vocab_size == 256 and loaded_cfg.state.scheme == "previous"


def test_interrupted_save_leaves_the_previous_checkpoint_loadable(tmp_path, corpus_file, monkeypatch):
    cfg = cfg_of(corpus_file, tmp_path / "cache", train__checkpoint_every=4, train__steps=4)
    train(cfg, tmp_path / "run")
    good = ckpt_io.latest_checkpoint(tmp_path / "run")
    model, _, _ = ckpt_io.load_model(good)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}

    def crash(tmp_dir, path):
        assert (tmp_dir / "meta.json").is_file()  # everything was written: only the rename is left
        raise Interrupt("power cut before the rename")

    monkeypatch.setattr(files, "_publish", crash)
    with pytest.raises(Interrupt):
        ckpt_io.save_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000008", model, cfg, 8)
    assert ckpt_io.latest_checkpoint(tmp_path / "run") == good  # the half-written one is invisible
    with pytest.raises(Interrupt):  # overwriting an existing checkpoint is just as safe
        ckpt_io.save_checkpoint(good, model, cfg, 4)
    ckpt_io.load_model(good)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before  # no temporary entry left, not one byte of the run changed


def poison(monkeypatch, step: int, models: list | None = None) -> None:
    """Make the model's logits NaN at training step ``step`` (1-based); built models are appended to ``models``."""
    real_build = train_setup.build_model
    calls = {"n": 0}

    def build_with_poison(config, **kwargs):
        model = real_build(config, **kwargs)
        forward = model.forward

        def poisoned(tokens, state=None):
            calls["n"] += 1
            logits, new_state = forward(tokens, state)
            return (logits * float("nan") if calls["n"] == step else logits), new_state

        model.forward = poisoned
        if models is not None:
            models.append(model)
        return model

    monkeypatch.setattr(train_setup, "build_model", build_with_poison)


def records_of(run_dir) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("log_every", [1, 4])
def test_non_finite_batch_is_skipped_and_training_continues(tmp_path, corpus_file, monkeypatch, log_every):
    models: list[torch.nn.Module] = []
    poison(monkeypatch, 3, models)
    cfg = cfg_of(corpus_file, tmp_path / "cache", state__scheme="previous", train__steps=8, train__log_every=log_every)
    losses: dict[int, float] = {}
    weights: dict[int, dict[str, torch.Tensor]] = {}

    def record(step, loss):
        losses[step] = loss
        weights[step] = {k: v.clone() for k, v in models[0].state_dict().items()}

    summary = train(cfg, tmp_path / "run", on_step=record)
    assert summary["steps"] == 8 and math.isfinite(summary["final_loss"])
    assert math.isnan(losses[3]) and all(math.isfinite(losses[s]) for s in losses if s != 3)
    assert all(torch.equal(weights[2][k], weights[3][k]) for k in weights[2])  # the update was skipped...
    assert not all(torch.equal(weights[3][k], weights[4][k]) for k in weights[3])  # ...and training went on
    trainer = ckpt_io.load_trainer(tmp_path / "run" / "checkpoints" / "step-00000008")
    assert all(int(s["step"]) == 7 for s in trainer["optimizer"]["state"].values())  # AdamW's count skipped it too
    skipped = [r["step"] for r in records_of(tmp_path / "run") if r.get("skipped")]
    assert skipped == [3]  # named exactly, even when it is only read back at step 4


def test_too_many_non_finite_steps_stop_with_a_clear_error(tmp_path, corpus_file):
    cfg = cfg_of(corpus_file, tmp_path / "cache", train__lr=1e9, train__warmup_steps=0, train__grad_clip=0.0,
                 train__max_bad_steps=2, train__steps=50, train__checkpoint_every=1)
    with pytest.raises(UserError, match="non-finite steps in a row"):
        train(cfg, tmp_path / "run")
    good = ckpt_io.latest_checkpoint(tmp_path / "run")
    assert good is not None
    model, _, _ = ckpt_io.load_model(good)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_run_of_bad_steps_between_log_steps_is_noticed_at_the_next_log_step(tmp_path, corpus_file):
    cfg = cfg_of(corpus_file, tmp_path / "cache", train__lr=1e9, train__warmup_steps=0, train__grad_clip=0.0,
                 train__max_bad_steps=2, train__steps=50, train__log_every=5)
    with pytest.raises(UserError, match="2 non-finite steps in a row at step 3 "):
        train(cfg, tmp_path / "run")
    assert [r["step"] for r in records_of(tmp_path / "run") if r.get("skipped")] == [2, 3]


@pytest.mark.parametrize("scheme", ["previous", "fitted_noise", "state_passing"])
def test_steps_between_log_steps_read_nothing_back_from_the_device(tmp_path, corpus_file, monkeypatch, scheme):
    """On CUDA, reading a tensor on the host (item, bool, float, tolist, .cpu(), ...) waits for the device. On the
    CPU every such read is counted here and attributed to the step whose batch was fetched last: only log
    steps may read. ``numpy()`` is not counted: it refuses device tensors (it is used for host-side masks)."""
    log_every, steps = 4, 10
    current = {"step": None}
    reads: list[tuple[int, str]] = []
    real_batch = train_setup.StreamLoader.batch

    def batch(self, step, rows=None):
        current["step"] = step
        return real_batch(self, step, rows)

    def counting(name: str):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            if current["step"] is not None:
                reads.append((current["step"] + 1, name))
            return real(self, *args, **kwargs)

        return counted

    monkeypatch.setattr(train_setup.StreamLoader, "batch", batch)
    for name in ("item", "tolist", "cpu", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    cfg = cfg_of(corpus_file, tmp_path / "cache", state__scheme=scheme, state__p_zero=0.3, state__reset="document",
                 train__log_every=log_every, train__steps=steps)
    train(cfg, tmp_path / "run")
    monkeypatch.undo()
    assert reads, "the instrument saw nothing: log steps must read the losses"
    bad = sorted({(step, name) for step, name in reads if step % log_every and step != steps})
    assert not bad, f"host reads on steps that do not log: {bad}"


def test_float16_scales_the_loss_skips_overflows_and_resumes_the_scaler(tmp_path, corpus_file, monkeypatch):
    # CPU runs refuse half precision; autocast to float16 on the CPU stands in for CUDA here
    monkeypatch.setattr(train_setup, "autocast_for", lambda device, dtype: torch.autocast("cpu", dtype=torch.float16))
    poison(monkeypatch, 3)  # NaN gradients at step 3: the scaler treats them as an overflow
    cfg = cfg_of(corpus_file, tmp_path / "cache", train__dtype="float16", train__steps=8, train__checkpoint_every=4)
    full: dict[int, float] = {}
    train(cfg, tmp_path / "full", on_step=lambda s, l: full.__setitem__(s, l))
    scaler = ckpt_io.load_trainer(tmp_path / "full" / "checkpoints" / "step-00000004")["scaler"]
    assert scaler["scale"] == 2.0**15 and scaler["_growth_tracker"] == 1  # halved at step 3, one clean step since
    assert all(math.isfinite(full[s]) for s in full if s != 3)

    monkeypatch.undo()
    monkeypatch.setattr(train_setup, "autocast_for", lambda device, dtype: torch.autocast("cpu", dtype=torch.float16))
    resumed: dict[int, float] = {}
    train(cfg, tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoints" / "step-00000004"),
          on_step=lambda s, l: resumed.__setitem__(s, l))
    assert resumed == {s: full[s] for s in range(5, 9)}
    final = ckpt_io.load_trainer(tmp_path / "resumed" / "checkpoints" / "step-00000008")["scaler"]
    assert final == ckpt_io.load_trainer(tmp_path / "full" / "checkpoints" / "step-00000008")["scaler"]
    assert final["scale"] == 2.0**15 and final["_growth_tracker"] == 5


def test_half_precision_on_the_cpu_is_refused_before_training(tmp_path, corpus_file):
    cfg = cfg_of(corpus_file, tmp_path / "cache", train__dtype="float16", train__device="cpu")
    with pytest.raises(UserError, match=r"train\.dtype=float16 needs a CUDA device"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


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
    assert all(a >= b for a, b in itertools.pairwise(values))
