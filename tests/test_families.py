"""Every family honours the one stateful interface, and trains/evaluates end to end through the same code."""

from __future__ import annotations

import pytest
import torch

from longssm.config import ModelConfig, from_dict, RunConfig
from longssm.evaluate.run import evaluate_run
from longssm.models import REGISTRY, build_model
from longssm.models.base import load_state, save_state
from longssm.quickstart import quickstart
from longssm.train import train

from conftest import tiny_overrides

FAMILIES = sorted(REGISTRY)
SIZES = dict(vocab_size=37, d_model=16, n_layers=2, d_state=8, head_dim=8, chunk_size=4)


def make(family: str, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(family=family, **SIZES)).to(dtype).eval()


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
def test_chunked_equals_whole_sequence_and_continuation_equals_concatenation(family):
    model = make(family)
    tokens = torch.randint(0, 37, (2, 23))
    g = torch.Generator().manual_seed(1)
    start = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) * 0.3 for k, v in model.initial_state(2, dtype=torch.float64).items()}
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
@pytest.mark.parametrize("scheme", ["zero", "previous"])
def test_train_and_eval_smoke(tmp_path, corpus_file, family, scheme):
    data = tiny_overrides(corpus_file, tmp_path / "cache", state__scheme=scheme, train__steps=4)
    data["model"] = {"family": family, "d_model": 16, "n_layers": 1, "d_state": 8, "head_dim": 8}
    summary = train(from_dict(RunConfig, data), tmp_path / "run")
    assert summary["steps"] == 4 and summary["final_loss"] < 6.0
    result = evaluate_run(tmp_path / "run", lengths=[8, 64], max_tokens=256, progress=False)
    assert result["family"] == family and result["scheme"] == scheme
    assert all(1 < v < 300 for v in result["ppl_vs_length"].values())


@pytest.mark.parametrize("family", FAMILIES)
def test_quickstart_smoke(tmp_path, family):
    out = quickstart(str(tmp_path / "qs"), family=family, steps=3, eval_tokens=128, max_length=64, progress=False,
                     overrides=["--model.d_model", "16", "--model.n_layers", "1", "--model.d_state", "8", "--model.head_dim", "8",
                                "--train.batch_size", "4", "--data.cache_dir", str(tmp_path / "cache")])
    assert [r["scheme"] for r in out["results"]] == ["zero", "previous"]
    assert (tmp_path / "qs" / "ppl_vs_length.png").is_file() and (tmp_path / "qs" / "results.md").is_file()
