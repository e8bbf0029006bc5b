"""GRU / LSTM LMs: blocks against a separate torch.nn.GRU/LSTM and hand-written float64 cells, and the
TBPTT invariants (chunked == whole, continuation == concatenation, safetensors round trip)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from longssm.config import ModelConfig
from longssm.models import build_model


def tiny(family: str) -> ModelConfig:
    return ModelConfig(family=family, vocab_size=32, d_model=8, n_layers=2)


def gru_loop(rnn: torch.nn.GRU, x: torch.Tensor, h: torch.Tensor):
    """PyTorch's GRU equations written out, one step at a time."""
    w_ih, w_hh, b_ih, b_hh = rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
    ys = []
    for t in range(x.shape[1]):
        gi, gh = F.linear(x[:, t], w_ih, b_ih), F.linear(h, w_hh, b_hh)
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        g = torch.tanh(i_n + r * h_n)
        h = (1 - z) * g + z * h
        ys.append(h)
    return torch.stack(ys, 1), (h,)


def lstm_loop(rnn: torch.nn.LSTM, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    ys = []
    for t in range(x.shape[1]):
        gates = F.linear(x[:, t], rnn.weight_ih_l0, rnn.bias_ih_l0)
        gates = gates + F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0)
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys, 1), (h, c)


@pytest.mark.parametrize("family", ["gru", "lstm"])
def test_model_equals_separate_torch_rnn_and_handwritten_cells(family):
    torch.manual_seed(0)
    model = build_model(tiny(family)).double().eval()
    tokens = torch.randint(0, 32, (3, 9))
    start = {k: torch.randn_like(v) for k, v in model.initial_state(3).items()}
    with torch.no_grad():
        logits, state = model(tokens, start)
        u_torch = u_hand = model.embedding(tokens)
        for i, layer in enumerate(model.layers):
            h0 = start[f"layers.{i}.h"]
            if family == "gru":
                ref = torch.nn.GRU(8, 8, batch_first=True).double()
                ref.load_state_dict(layer.rnn.state_dict())
                y, h_n = ref(layer.norm(u_torch), h0[None].contiguous())
                out_torch = (h_n[0],)
                y_hand, out_hand = gru_loop(ref, layer.norm(u_hand), h0)
            else:
                c0 = start[f"layers.{i}.c"]
                ref = torch.nn.LSTM(8, 8, batch_first=True).double()
                ref.load_state_dict(layer.rnn.state_dict())
                y, (h_n, c_n) = ref(layer.norm(u_torch), (h0[None].contiguous(), c0[None].contiguous()))
                out_torch = (h_n[0], c_n[0])
                y_hand, out_hand = lstm_loop(ref, layer.norm(u_hand), h0, c0)
            u_torch, u_hand = u_torch + y, u_hand + y_hand
            for part, a, b in zip(model.parts, out_torch, out_hand):
                assert (state[f"layers.{i}.{part}"] - a).abs().max() < 1e-12
                assert (state[f"layers.{i}.{part}"] - b).abs().max() < 1e-12
        for u in (u_torch, u_hand):
            assert (model.lm_head(model.norm_f(u)) - logits).abs().max() < 1e-12


@pytest.mark.parametrize("family", ["gru", "lstm"])
def test_state_keys_shapes_and_zero_default(family):
    model = build_model(tiny(family))
    zeros = model.initial_state(4)
    parts = ["h"] if family == "gru" else ["h", "c"]
    assert set(zeros) == {f"layers.{i}.{p}" for i in range(2) for p in parts}
    assert all(v.shape == (4, 8) and v.dtype == torch.float32 and not v.any() for v in zeros.values())
    tokens = torch.randint(0, 32, (4, 5))
    logits, state = model(tokens)
    logits0, _ = model(tokens, zeros)
    assert torch.equal(logits, logits0) and logits.shape == (4, 5, 32)
    assert set(state) == set(zeros) and all(v.shape == (4, 8) for v in state.values())


@pytest.mark.parametrize("family", ["gru", "lstm"])
def test_chunked_equals_whole_and_continuation(family):
    torch.manual_seed(1)
    model = build_model(tiny(family)).double().eval()
    tokens = torch.randint(0, 32, (2, 17))
    start = {k: torch.randn_like(v) for k, v in model.initial_state(2).items()}
    with torch.no_grad():
        logits, state = model(tokens, start)
        for cuts in ([8], list(range(1, 17)), [3, 4, 11]):
            pieces, s = [], start
            for lo, hi in zip([0] + cuts, cuts + [17]):
                out, s = model(tokens[:, lo:hi], s)
                pieces.append(out)
            assert (torch.cat(pieces, 1) - logits).abs().max() < 1e-12
            assert all((s[k] - state[k]).abs().max() < 1e-12 for k in state)


@pytest.mark.parametrize("family", ["gru", "lstm"])
def test_state_safetensors_round_trip(family, tmp_path):
    torch.manual_seed(2)
    model = build_model(tiny(family))
    tokens = torch.randint(0, 32, (2, 6))
    _, state = model(tokens)
    save_file({k: v.detach() for k, v in state.items()}, tmp_path / "state.safetensors")
    loaded = load_file(tmp_path / "state.safetensors")
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    with torch.no_grad():
        a, _ = model(tokens, state)
        b, _ = model(tokens, loaded)
    assert torch.equal(a, b)
