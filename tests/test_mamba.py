"""Mamba-1: the chunked recurrence is exact, names and logits match HF ``MambaForCausalLM``."""

from __future__ import annotations

import pytest
import torch

from longssm.config import ModelConfig
from longssm.models import RecurrentLM, build_model, set_scan
from longssm.models.base import detach_state
from longssm.models.hf_adapters import hf_adapter

V = 37


def tiny_config(**kw) -> ModelConfig:
    base = dict(family="mamba", vocab_size=V, d_model=16, n_layers=2, d_state=4, expand=2, d_conv=4, dt_rank=3,
                chunk_size=8)
    base.update(kw)
    return ModelConfig(**base)


def make_model(dtype=torch.float64, seed=0, **kw) -> RecurrentLM:
    torch.manual_seed(seed)
    model = build_model(tiny_config(**kw)).to(dtype)
    with torch.no_grad():  # move Δ away from its tiny init so the state carries real memory across chunks
        for layer in model.backbone.layers:
            layer.mixer.dt_proj.bias.add_(2.0)
            layer.mixer.A_log.add_(0.1 * torch.randn_like(layer.mixer.A_log))
    return model.eval()


def split_points(length: int, gen: torch.Generator) -> list[int]:
    """Random chunk lengths summing to ``length``, always including lengths 1 and 2 (< d_conv - 1)."""
    sizes = [1, 2]
    while sum(sizes) < length:
        sizes.append(int(torch.randint(1, 9, (1,), generator=gen)))
    sizes[-1] -= sum(sizes) - length
    return [s for s in sizes if s > 0]


@pytest.mark.parametrize("scan", ["reference", "chunked"])
def test_chunked_recurrence_equals_whole_sequence(scan):
    model = make_model(scan=scan)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (3, 41), generator=gen)
    with torch.no_grad():
        whole, whole_state = model(tokens)
        state = model.initial_state(3)
        pieces, start = [], 0
        for size in split_points(tokens.shape[1], gen):
            logits, state = model(tokens[:, start:start + size], state)
            pieces.append(logits)
            start += size
    assert start == tokens.shape[1]
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-10, rtol=0)
    assert state.keys() == whole_state.keys()
    for key in whole_state:
        torch.testing.assert_close(state[key], whole_state[key], atol=1e-10, rtol=0)


def test_state_shapes_and_none_means_zeros():
    model = make_model()
    c = model.config
    state = model.initial_state(2)
    assert set(state) == {f"layers.{i}.{p}" for i in range(c.n_layers) for p in ("conv", "ssm")}
    assert state["layers.0.conv"].shape == (2, c.d_inner, c.d_conv - 1)
    assert state["layers.1.ssm"].shape == (2, c.d_inner, c.d_state)
    assert all(v.dtype == torch.float64 and not v.any() for v in state.values())
    tokens = torch.randint(0, V, (2, 5))
    with torch.no_grad():
        a, sa = model(tokens)
        b, _ = model(tokens, state)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    # the state is not trivially zero afterwards, and every tensor is contiguous (safetensors can save it)
    assert all(v.abs().max() > 0 for v in sa.values())
    assert all(v.is_contiguous() for v in sa.values())


def test_tbptt_windows_carry_state_like_concatenation():
    """Windows k and k+1 with the detached carried state give the logits of the concatenated sequence,
    and gradients still flow inside each window."""
    model = make_model(scan="chunked")
    tokens = torch.randint(0, V, (2, 24))
    with torch.no_grad():
        whole, _ = model(tokens)
    state = model.initial_state(2)
    outs = []
    for k in range(3):
        logits, state = model(tokens[:, 8 * k:8 * (k + 1)], state)
        logits.sum().backward()
        state = detach_state(state)
        outs.append(logits.detach())
    torch.testing.assert_close(torch.cat(outs, dim=1), whole, atol=1e-10, rtol=0)
    grad = model.backbone.layers[0].mixer.A_log.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0


def test_gradient_reaches_initial_state():
    model = make_model()
    state = {k: torch.randn_like(v, requires_grad=True) for k, v in model.initial_state(2).items()}
    logits, _ = model(torch.randint(0, V, (2, 3)), state)
    logits.square().sum().backward()
    assert all(v.grad is not None and v.grad.abs().max() > 0 for v in state.values())


def test_chunked_scan_model_equals_reference_scan_model():
    tokens = torch.randint(0, V, (2, 29))
    ref, chunked = make_model(torch.float32, scan="reference"), make_model(torch.float32, scan="chunked")
    with torch.no_grad():
        (a, sa), (b, sb) = ref(tokens), chunked(tokens)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    for key in sa:
        torch.testing.assert_close(sb[key], sa[key], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------
# External oracle: Hugging Face transformers, tiny random config, no downloads.

@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def hf_pair(transformers, seed=0):
    torch.manual_seed(seed)
    hf_config = transformers.MambaConfig(
        vocab_size=V, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=4,
        time_step_rank=3, layer_norm_epsilon=1e-5, use_bias=False, use_conv_bias=True,
    )
    hf = transformers.MambaForCausalLM(hf_config).eval()
    ours = build_model(tiny_config()).eval()
    return hf, ours


def test_state_dict_names_are_hf_names(transformers):
    hf, ours = hf_pair(transformers)
    hf_sd, our_sd = hf.state_dict(), ours.state_dict()
    assert set(hf_sd) == set(our_sd)
    assert all(hf_sd[k].shape == our_sd[k].shape for k in hf_sd)
    # both directions, strict, with the identity mapping
    ours.load_state_dict(hf_sd, strict=True)
    hf.load_state_dict(ours.state_dict(), strict=True)


def test_adapter_reads_save_pretrained_and_mamba_ssm_files(transformers):
    """save_pretrained omits the tied lm_head.weight; original mamba_ssm files say backbone.embedding (singular)."""
    hf, _ = hf_pair(transformers)
    hf_sd = hf.state_dict()
    adapter = hf_adapter("mamba")
    without_head = {k: v for k, v in hf_sd.items() if k != "lm_head.weight"}
    mamba_ssm_style = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in without_head.items()}
    for source in (without_head, mamba_ssm_style):
        fresh = build_model(tiny_config())
        fresh.load_state_dict(adapter.from_hf(source), strict=True)
        assert fresh.lm_head.weight is fresh.backbone.embeddings.weight
        torch.testing.assert_close(fresh.lm_head.weight, hf_sd["backbone.embeddings.weight"], atol=0, rtol=0)
    # to_hf writes the head out again: HF loads what our checkpoints store (the tied head once)
    hf.load_state_dict(adapter.to_hf({k: v for k, v in fresh.state_dict().items() if k != "lm_head.weight"}))


@pytest.mark.parametrize("scan", ["reference", "chunked"])
def test_logits_match_hf(transformers, scan):
    hf, ours = hf_pair(transformers, seed=3)
    set_scan(ours, scan)
    ours.load_state_dict(hf.state_dict(), strict=True)
    tokens = torch.randint(0, V, (2, 23))
    with torch.no_grad():
        expected = hf(tokens).logits
        got, _ = ours(tokens)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
