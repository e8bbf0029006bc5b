"""Every family honours the one stateful interface, and trains/evaluates end to end through the same code."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_overrides
from longssm.checkpoint import load_weights
from longssm.config import EvalConfig, ModelConfig, RunConfig, from_dict
from longssm.errors import UserError
from longssm.evaluate.run import evaluate_run
from longssm.models import build_model, set_scan
from longssm.models.base import load_state, save_state
from longssm.models.registry import family_names
from longssm.quickstart import quickstart
from longssm.train import train

FAMILIES = list(family_names())
SIZES = dict(vocab_size=37, d_model=16, n_layers=2, d_state=8, head_dim=8, chunk_size=4)
MARGIN = 0.5
"""Nats per token that a few training steps must gain over the untrained model."""


LINEAR_ATTENTION = ("deltanet", "gated_deltanet", "gla")


def make(family: str, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, **SIZES)).to(dtype).eval()
    if family in LINEAR_ATTENTION:
        scramble(model)
    return model


@torch.no_grad()
def scramble(model: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Random weights of order one for the linear-attention mixers: fla's initialisation (N(0, 0.02)) leaves their
    outputs ~1e-7 of the residual stream, too small for a float64 comparison to see a wrong recurrence. The decay
    parameters keep their initialisation."""
    for name, p in model.named_parameters():
        if ".mixer." in name and not name.endswith(("A_log", "dt_bias")):
            p.normal_(0, std)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_state_is_a_flat_dict_of_real_batch_first_tensors(family):
    model = make(family, torch.float32)
    init = model.initial_state(3)
    assert init and all(isinstance(k, str) for k in init)
    for v in init.values():
        assert v.shape[0] == 3 and v.is_floating_point() and not v.is_complex() and (v == 0).all()
    logits, state = model(torch.randint(0, 37, (3, 5)))
    assert logits.shape == (3, 5, 37)
    assert state.keys() == init.keys() and all(state[k].shape == init[k].shape for k in init)
    n_layer_keys = {k.split(".")[1] for k in init}
    assert n_layer_keys == {"0", "1"}  # every layer's state is carried


@pytest.mark.parametrize("family", FAMILIES)
def test_the_scan_is_chosen_when_the_model_is_built_and_again_by_set_scan(family):
    model = build_model(ModelConfig(family=family, scan="reference", **SIZES))
    chosen = lambda: {layer.mixer.scan_impl for layer in model.backbone.layers}  # noqa: E731
    assert chosen() == {"reference"}
    model.config.scan = "chunked"  # the config alone changes nothing: forward runs the stored choice
    assert chosen() == {"reference"}
    assert set_scan(model) is model and chosen() == {"chunked"}
    assert set_scan(model, "reference") is model and chosen() == {"reference"} and model.config.scan == "reference"
    with pytest.raises(UserError, match=r"model\.scan must be auto, chunked, reference, triton, mamba_ssm or fla"):
        set_scan(model, "cuda")
    assert model.config.scan == "reference" and chosen() == {"reference"}  # a refused scan leaves the model as is


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_equals_whole_sequence_and_continuation_equals_concatenation(family):
    model = make(family)
    tokens = torch.randint(0, 37, (2, 23))
    g = torch.Generator().manual_seed(1)
    start = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) * 0.3
             for k, v in model.initial_state(2, dtype=torch.float64).items()}
    with torch.no_grad():
        whole, final = model(tokens, start)
        for cuts in ([1, 2, 3, 17], [11, 12], [1] * 23):
            state, pieces, t = start, [], 0
            for c in cuts:
                out, state = model(tokens[:, t : t + c], state)
                pieces.append(out)
                t += c
            torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=0, atol=1e-10)
            for k in final:
                torch.testing.assert_close(state[k], final[k], rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_state_survives_safetensors_bit_exactly(tmp_path, family):
    model = make(family, torch.float32)
    tokens = torch.randint(0, 37, (2, 9))
    with torch.no_grad():
        _, state = model(tokens[:, :5])
        save_state(state, tmp_path / "s.safetensors")
        loaded = load_state(tmp_path / "s.safetensors")
        assert all(torch.equal(loaded[k], state[k]) for k in state)
        a, _ = model(tokens[:, 5:], state)
        b, _ = model(tokens[:, 5:], loaded)
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_tied_head_loading_is_the_same_for_every_family(tmp_path, family):
    """A missing lm_head.weight is the embedding; a different one is refused (load_state_dict and load_weights),
    never overwritten; an untied model takes it."""
    source = make(family, torch.float32)
    without_head = {k: v for k, v in source.state_dict().items() if k != "lm_head.weight"}
    target = build_model(source.config)
    target.load_state_dict(without_head, strict=True)
    assert target.lm_head.weight is target.backbone.embeddings.weight
    assert torch.equal(target.lm_head.weight, source.backbone.embeddings.weight)
    untied = dict(without_head, **{"lm_head.weight": torch.randn_like(source.lm_head.weight)})
    with pytest.raises(UserError, match="untied lm_head"):
        target.load_state_dict(untied)
    save_file(untied, str(tmp_path / "untied.safetensors"))
    with pytest.raises(UserError, match="untied lm_head"):
        load_weights(target, tmp_path / "untied.safetensors")
    assert torch.equal(target.lm_head.weight, source.backbone.embeddings.weight)  # untouched by the refusals
    separate = build_model(source.config, tie_embeddings=False)
    separate.load_state_dict(untied, strict=True)
    assert torch.equal(separate.lm_head.weight, untied["lm_head.weight"])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scheme", ["zero", "previous"])
def test_train_and_eval_smoke(tmp_path, corpus_file, family, scheme):
    """Training lowers the loss well below the untrained model's (ln 256 = 5.55 nats per byte, measured here as
    the loss of the first step, taken before any update), and so does evaluation at every length."""
    data = tiny_overrides(corpus_file, tmp_path / "cache", state__scheme=scheme, train__steps=12,
                          train__lr=2e-2)
    data["model"] = {"family": family, "d_model": 16, "n_layers": 1, "d_state": 8, "head_dim": 8}
    losses: dict[int, float] = {}
    summary = train(from_dict(RunConfig, data), tmp_path / "run", on_step=lambda s, l: losses.__setitem__(s, l))
    untrained = losses[1]
    assert summary["steps"] == 12 and summary["final_loss"] < untrained - MARGIN
    result = evaluate_run(tmp_path / "run", EvalConfig(lengths=[8, 64], max_tokens=256), progress=False)
    assert result["family"] == family and result["scheme"] == scheme
    assert all(math.log(ppl) < untrained - MARGIN for ppl in result["ppl_vs_length"].values())


@pytest.mark.parametrize("family", FAMILIES)
def test_quickstart_smoke(tmp_path, family):
    out = quickstart(str(tmp_path / "qs"), family=family, steps=3, eval_tokens=128, max_length=64, progress=False,
                     overrides=["--model.d_model", "16", "--model.n_layers", "1", "--model.d_state", "8",
                                "--model.head_dim", "8", "--train.batch_size", "4",
                                "--data.cache_dir", str(tmp_path / "cache")])
    assert [r["scheme"] for r in out["results"]] == ["zero", "previous"]
    assert (tmp_path / "qs" / "ppl_vs_length.png").is_file() and (tmp_path / "qs" / "results.md").is_file()


@pytest.mark.parametrize("family", ["mamba", "gru", "gated_deltanet"])
def test_the_mlp_sublayer_is_stateless_and_follows_every_mixer(family):
    """model.mlp_expand > 0: norm -> mixer -> norm -> SwiGLU MLP per block (fla's layout); the state is the mixers'
    alone, a sequence fed in pieces still gives the logits of one pass, and mlp_expand 0 is today's model."""
    plain = make(family)
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, mlp_expand=2.5, **SIZES)).to(torch.float64).eval()
    extra = set(model.state_dict()) - set(plain.state_dict())
    norm_params = {f"backbone.layers.{i}.mlp_norm.{k}" for i in range(2)
                   for k in plain.backbone.layers[0].norm.state_dict()}   # the family's norm (LayerNorm: a bias too)
    assert extra == norm_params | {f"backbone.layers.{i}.mlp.{name}.weight" for i in range(2)
                                   for name in ("gate_proj", "up_proj", "down_proj")}
    assert model.backbone.layers[0].mlp.gate_proj.weight.shape == (40, 16)  # round(2.5 * d_model)
    assert not any("mlp" in k for k in plain.state_dict())
    assert model.initial_state(2).keys() == plain.initial_state(2).keys()
    tokens = torch.randint(0, 37, (2, 13))
    with torch.no_grad():
        whole, final = model(tokens)
        first, state = model(tokens[:, :6])
        second, state = model(tokens[:, 6:], state)
        torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=0, atol=1e-10)
        assert all(torch.allclose(state[k], final[k], rtol=0, atol=1e-10) for k in final)
        layer = model.backbone.layers[0]
        x = torch.randn(2, 5, 16, dtype=torch.float64)
        layer_state = {part: v[:, :] for part, v in model.initial_state(2).items() if part.startswith("layers.0.")}
        y, _ = layer(x, {k.split(".", 2)[2]: v for k, v in layer_state.items()})
        mixed = x + layer.mixer(layer.norm(x), {k.split(".", 2)[2]: v for k, v in layer_state.items()})[0]
        mlp = layer.mlp
        expected = mixed + mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(layer.mlp_norm(mixed)))
                                         * mlp.up_proj(layer.mlp_norm(mixed)))
        torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


CONVS = ("conv_q", "conv_k", "conv_v")


@pytest.mark.parametrize("family, layers, carried", [
    ("deltanet", None, {*CONVS, "kv"}), ("gated_deltanet", None, {*CONVS, "kv"}), ("gla", None, {*CONVS, "kv"}),
    ("swa", None, {"k", "v", "filled"}), ("mamba", ["swa", "mamba"], {"k", "v", "filled"})])
def test_resume_is_bit_identical_with_document_resets(tmp_path, corpus_file, family, layers, carried):
    """The families added after the interface was first tested (test_train covers Mamba, S5), and a hybrid: a run
    cut after step 7 and resumed from its step-5 checkpoint gives the losses and weights of the uncut run, bit for
    bit, with the carried state zeroed at document starts (state.reset document) and a zero start in three
    windows."""
    from longssm import checkpoint as ckpt_io

    data = tiny_overrides(corpus_file, tmp_path / "cache", state__scheme="previous", state__reset="document",
                          state__p_zero=0.3, train__checkpoint_every=5, train__steps=10)
    data["model"] = {"family": family, "layers": layers, "d_model": 16, "n_layers": 2, "head_dim": 8,
                     "mlp_expand": 1.0, "window": 5}
    cfg = from_dict(RunConfig, data)
    full: dict[int, float] = {}
    train(cfg, tmp_path / "full", on_step=lambda s, l: full.__setitem__(s, l))

    class Interrupt(Exception):
        pass

    def stop_at_7(step, loss):
        if step == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", on_step=stop_at_7)
    resumed: dict[int, float] = {}
    train(cfg, tmp_path / "cut", resume="auto", on_step=lambda s, l: resumed.__setitem__(s, l))
    assert sorted(resumed) == list(range(6, 11)) and all(resumed[s] == full[s] for s in resumed)
    states = ckpt_io.load_states(tmp_path / "cut" / "checkpoints" / "step-00000010")
    assert {k for k in states if k.startswith("carried.layers.0.")} == {f"carried.layers.0.{k}" for k in carried}
    a = load_weights_dict(tmp_path / "full" / "final" / "model.safetensors")
    b = load_weights_dict(tmp_path / "cut" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def load_weights_dict(path):
    from safetensors.torch import load_file

    return load_file(str(path))
