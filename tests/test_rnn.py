"""GRU / LSTM: the model against separate torch.nn.GRU/LSTM modules layer by layer, the reference loop against
torch's implementation (outputs, final state, every gradient), and the TBPTT invariant for both."""

from __future__ import annotations

import pytest
import torch

from longssm.config import ModelConfig
from longssm.models import RecurrentLM, build_model
from longssm.models.base import State

FAMILIES = ["gru", "lstm"]
PARTS = {"gru": ("h",), "lstm": ("h", "c")}
D, V = 8, 32


def make(family: str, scan: str = "auto", seed: int = 0) -> RecurrentLM:
    """A float64 two-layer model whose state is non-trivial: random initial state via ``random_state``."""
    torch.manual_seed(seed)
    return build_model(ModelConfig(family=family, vocab_size=V, d_model=D, n_layers=2, scan=scan)).double()


def random_state(model: RecurrentLM, batch: int, seed: int = 1) -> State:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in model.initial_state(batch).items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_model_equals_separate_torch_rnns_layer_by_layer(family):
    """embedding -> [u + RNN(LayerNorm(u))] x 2 -> LayerNorm -> tied head, each RNN a fresh torch module."""
    model = make(family).eval()
    tokens = torch.randint(0, V, (3, 9))
    start = random_state(model, 3)
    with torch.no_grad():
        logits, state = model(tokens, start)
        u = model.backbone.embeddings(tokens)
        for i, layer in enumerate(model.backbone.layers):
            rnn = type(layer.mixer.rnn)(D, D, batch_first=True).double()
            rnn.load_state_dict(layer.mixer.rnn.state_dict())
            hx = tuple(start[f"layers.{i}.{part}"][None].contiguous() for part in PARTS[family])
            y, final = rnn(layer.norm(u), hx if family == "lstm" else hx[0])
            for part, expected in zip(PARTS[family], final if family == "lstm" else (final,)):
                assert (state[f"layers.{i}.{part}"] - expected[0]).abs().max() < 1e-12
            u = u + y
        assert (model.lm_head(model.backbone.norm_f(u)) - logits).abs().max() < 1e-12


@pytest.mark.parametrize("length", [1, 7, 16])
@pytest.mark.parametrize("family", FAMILIES)
def test_reference_loop_equals_torch_rnn_with_gradients(family, length):
    """scan=reference (Eq. 1/2 written out) == scan=chunked (nn.GRU/nn.LSTM), float64: logits, final state and
    the gradients of a random functional of both w.r.t. every parameter and the initial state."""
    tokens = torch.randint(0, V, (2, length), generator=torch.Generator().manual_seed(length))
    results = {}
    for scan in ("chunked", "reference"):
        model = make(family, scan=scan)
        start = {k: v.requires_grad_() for k, v in random_state(model, 2).items()}
        logits, state = model(tokens, start)
        gen = torch.Generator().manual_seed(2)
        objective = (logits * torch.randn(logits.shape, generator=gen, dtype=logits.dtype)).sum()
        objective = objective + sum((v * torch.randn(v.shape, generator=gen, dtype=v.dtype)).sum()
                                    for v in state.values())
        leaves = dict(model.named_parameters()) | {f"initial {k}": v for k, v in start.items()}
        grads = torch.autograd.grad(objective, list(leaves.values()))
        results[scan] = logits, state, dict(zip(leaves, grads))
    (logits, state, grads), (logits_ref, state_ref, grads_ref) = results["chunked"], results["reference"]
    assert (logits - logits_ref).abs().max() < 1e-12
    assert all((state[k] - state_ref[k]).abs().max() < 1e-12 for k in state)
    for name, grad in grads.items():
        assert (grad - grads_ref[name]).abs().max() < 1e-12, name


@pytest.mark.parametrize("family", FAMILIES)
def test_state_keys_shapes_and_zero_default(family):
    model = make(family).float()
    zeros = model.initial_state(4)
    assert set(zeros) == {f"layers.{i}.{p}" for i in range(2) for p in PARTS[family]}
    assert all(v.shape == (4, D) and v.dtype == torch.float32 and not v.any() for v in zeros.values())
    tokens = torch.randint(0, V, (4, 5))
    logits, state = model(tokens)
    logits0, _ = model(tokens, zeros)
    assert torch.equal(logits, logits0) and logits.shape == (4, 5, V)
    assert set(state) == set(zeros) and all(v.shape == (4, D) for v in state.values())


@pytest.mark.parametrize("scan", ["chunked", "reference"])
@pytest.mark.parametrize("family", FAMILIES)
def test_pieces_with_carried_state_equal_the_whole_sequence(family, scan):
    model = make(family, scan=scan).eval()
    tokens = torch.randint(0, V, (2, 17))
    start = random_state(model, 2)
    with torch.no_grad():
        whole, final = model(tokens, start)
        for cuts in ([8], list(range(1, 17)), [3, 4, 11]):
            pieces, state = [], start
            for lo, hi in zip([0, *cuts], [*cuts, 17]):
                out, state = model(tokens[:, lo:hi], state)
                pieces.append(out)
            assert (torch.cat(pieces, 1) - whole).abs().max() < 1e-12
            assert all((state[k] - final[k]).abs().max() < 1e-12 for k in final)
