"""Sliding-window attention with its carried key/value cache, and hybrid models (``model.layers``): banded attention
against ``torch.nn.functional.scaled_dot_product_attention`` over the whole sequence (values and gradients, the
cache carried across pieces), the empty cache as the zero state, constant state size, hybrids of any registered
families, and the schemes a cache refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides
from longssm.config import ModelConfig, RunConfig, from_dict
from longssm.errors import UserError
from longssm.models import build_model, set_scan
from longssm.models.registry import register_family
from longssm.models.swa import rotate, window_attention
from longssm.train.setup import check_scheme_fits_the_layers

B, H, K = 2, 3, 8


def banded_sdpa(q, k, v, window: int):
    """The oracle: full-sequence attention with absolute rotary positions and the band 0 <= i - j <= window."""
    pos = torch.arange(q.shape[1])
    gap = pos[:, None] - pos[None, :]
    mask = (gap >= 0) & (gap <= window)
    qr, kr = rotate(q, pos).transpose(1, 2), rotate(k, pos).transpose(1, 2)       # (b, h, l, K)
    return F.scaled_dot_product_attention(qr, kr, v.transpose(1, 2), attn_mask=mask).transpose(1, 2)


def empty_cache(window: int, dtype=torch.float64):
    return (torch.zeros(B, window, H, K, dtype=dtype), torch.zeros(B, window, H, K, dtype=dtype),
            torch.zeros(B, window, dtype=dtype))


@pytest.mark.parametrize("window, block", [(1, 4), (5, 1), (5, 3), (7, 16), (40, 8)])
def test_blocks_with_a_carried_cache_equal_full_sequence_banded_attention(window, block):
    """Values and the gradients w.r.t. every q, k, v, with the sequence fed in pieces (the cache carried)."""
    gen = torch.Generator().manual_seed(window)
    q, k, v = (torch.randn(B, 29, H, K, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    expected = banded_sdpa(q, k, v, window)
    weight = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    grads_expected = torch.autograd.grad((expected * weight).sum(), (q, k, v))
    cache, pieces, t = empty_cache(window), [], 0
    for cut in (3, 1, 11, 14):
        o, cache = window_attention(q[:, t:t + cut], k[:, t:t + cut], v[:, t:t + cut], cache, window, block)
        pieces.append(o)
        t += cut
    got = torch.cat(pieces, dim=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for g, e in zip(torch.autograd.grad((got * weight).sum(), (q, k, v)), grads_expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)
    filled = [0.0] * max(0, window - 29) + [1.0] * min(window, 29)      # 29 tokens seen: the last ones are filled
    assert cache[0].shape == (B, window, H, K) and cache[2].tolist() == [filled] * B


def test_the_cache_holds_the_last_window_tokens_unrotated_and_marks_empty_slots():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, 3, H, K, generator=gen, dtype=torch.float64) for _ in range(3))
    _, (ck, cv, filled) = window_attention(q, k, v, empty_cache(5), 5, 2)
    assert filled.tolist() == [[0, 0, 1, 1, 1]] * B
    assert torch.equal(ck[:, 2:], k) and torch.equal(cv[:, 2:], v) and not ck[:, :2].any()


def model(layers=None, family="swa", **extra):
    torch.manual_seed(0)
    m = build_model(ModelConfig(family=family, layers=layers, vocab_size=37, d_model=16, n_layers=4, head_dim=8,
                                window=6, chunk_size=4, d_state=4, **extra)).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


@pytest.mark.parametrize("layers, family", [(None, "swa"), (["mamba", "swa"], "mamba"),
                                            (["swa", "gated_deltanet", "gru"], "mamba")])
def test_models_in_pieces_equal_one_pass_and_the_state_does_not_grow(layers, family):
    m = model(layers, family, mlp_expand=2.0)
    tokens = torch.randint(0, 37, (2, 41))
    with torch.no_grad():
        whole, final = m(tokens)
        state, pieces = None, []
        for s in range(0, 41, 9):
            out, state = m(tokens[:, s:s + 9], state)
            pieces.append(out)
        set_scan(m, "reference")
        reference, _ = m(tokens)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=0, atol=1e-10)
    torch.testing.assert_close(reference, whole, rtol=0, atol=1e-10)
    assert all(torch.allclose(state[k], final[k], rtol=0, atol=1e-10) for k in final)
    assert m.initial_state(2).keys() == final.keys()
    assert all(v.shape == m.initial_state(2)[k].shape for k, v in final.items())  # W tokens, whatever L
    pattern = layers or [family]
    for i in range(len(m.backbone.layers)):
        kind = pattern[i % len(pattern)]
        assert (f"layers.{i}.filled" in final) == (kind == "swa")


def test_the_zero_state_is_an_empty_cache():
    """From zeros the first token attends to itself alone: the same logits as the sequence's first token."""
    m = model()
    tokens = torch.randint(0, 37, (2, 7))
    with torch.no_grad():
        whole, _ = m(tokens)
        first, _ = m(tokens[:, :1], m.initial_state(2, dtype=torch.float64))
    torch.testing.assert_close(first[:, 0], whole[:, 0], rtol=0, atol=1e-12)


class TinyRecurrence(torch.nn.Module):
    """A user block inside a pattern: h_t = 0.5 h_{t-1} + x_t."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(config.d_model))

    def state_shapes(self):
        return {"h": (16,)}

    def forward(self, x, state):
        h, ys = state["h"], []
        for x_t in x.unbind(1):
            h = 0.5 * h + x_t
            ys.append(h * self.scale)
        return torch.stack(ys, 1), {"h": h}


def test_a_registered_user_block_works_inside_a_pattern():
    register_family("tiny_recurrence_in_pattern", TinyRecurrence)
    m = model(["tiny_recurrence_in_pattern", "swa"], "mamba")
    tokens = torch.randint(0, 37, (2, 10))
    with torch.no_grad():
        whole, final = m(tokens)
        a, state = m(tokens[:, :4])
        b, _ = m(tokens[:, 4:], state)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=0, atol=1e-10)
    assert {"layers.0.h", "layers.1.k", "layers.2.h", "layers.3.filled"} <= final.keys()


def test_noise_schemes_are_refused_for_a_cache_and_the_others_allowed(corpus_file, tmp_path):
    def cfg(scheme, **model):
        data = tiny_overrides(corpus_file, tmp_path / "cache", state__scheme=scheme)
        data["model"] = {"d_model": 16, "head_dim": 8, **model}
        return from_dict(RunConfig, data)

    for scheme in ("random_noise", "fitted_noise"):
        with pytest.raises(UserError, match=f"state.scheme {scheme} adds noise .* a swa layer's state is a cache"):
            check_scheme_fits_the_layers(cfg(scheme, family="mamba", layers=["mamba", "swa"]))
    for scheme in ("zero", "previous", "state_passing"):
        check_scheme_fits_the_layers(cfg(scheme, family="swa"))
    check_scheme_fits_the_layers(cfg("random_noise", family="mamba", layers=["mamba", "gla"]))


def test_bad_patterns_and_windows():
    with pytest.raises(UserError, match=r"model\.family must be one of .*; got 'nope'"):
        build_model(ModelConfig(family="mamba", layers=["mamba", "nope"], vocab_size=8, d_model=16, head_dim=8))
    with pytest.raises(UserError, match=r"model\.layers must be a non-empty list of family names or null"):
        ModelConfig(layers=[])
    with pytest.raises(UserError, match=r"model\.window must be in \[1, 16384\]"):
        ModelConfig(family="swa", window=0)
    with pytest.raises(UserError, match=r"model\.head_dim must divide model\.d_model = 16"):
        build_model(ModelConfig(family="swa", vocab_size=8, d_model=16, head_dim=5))
