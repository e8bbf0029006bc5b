"""Mamba-2: chunked SSD against the sequential recurrence, the TBPTT invariant, and HF ``Mamba2ForCausalLM``."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import longssm.ops.ssd as ssd_module
from longssm.config import ModelConfig
from longssm.models import RecurrentLM, build_model
from longssm.models.hf_adapters import hf_adapter
from longssm.ops.ssd import ssd_chunked, ssd_ref

F64 = torch.float64


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-6) -> float:
    """||a - b|| / max(||b||, floor), in float64."""
    a, b = a.detach().to(F64), b.detach().to(F64)
    return float((a - b).norm() / max(float(b.norm()), floor))


def ssd_inputs(l: int, dtype: torch.dtype, dt_range=(0.01, 1.0), b=2, h=4, p=3, g=2, n=5, seed=0):
    """x, dt, A, B, C, D, initial_state (leaves requiring grad) for a scan with h heads in g groups."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = dt_range
    tensors = [
        torch.randn(b, l, h, p, generator=gen),                      # x
        lo + (hi - lo) * torch.rand(b, l, h, generator=gen),         # Δ
        -torch.empty(h).uniform_(0.5, 4.0, generator=gen),           # A < 0
        torch.randn(b, l, g, n, generator=gen),                      # B
        torch.randn(b, l, g, n, generator=gen),                      # C
        torch.randn(h, generator=gen),                               # D
        torch.randn(b, h, p, n, generator=gen),                      # initial state
    ]
    return [t.to(dtype).requires_grad_() for t in tensors]


def run_with_grads(op, inputs, **kwargs):
    """Output, final state and the gradients of a fixed random functional of both w.r.t. every input."""
    y, state = op(*inputs[:5], D=inputs[5], initial_state=inputs[6], **kwargs)
    gen = torch.Generator().manual_seed(1)
    wy = torch.randn(y.shape, generator=gen).to(y.dtype)
    ws = torch.randn(state.shape, generator=gen).to(state.dtype)
    grads = torch.autograd.grad((y * wy).sum() + (state * ws).sum(), inputs)
    return y, state, grads


NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("l", [1, 5, 37, 100])
def test_chunked_ssd_matches_sequential_reference(l, dtype, tol):
    inputs = ssd_inputs(l, dtype)
    y, state, grads = run_with_grads(ssd_chunked, inputs, chunk_size=16)
    reference = [t.detach().to(F64).requires_grad_() for t in inputs]    # the oracle always runs in float64
    y_ref, state_ref, grads_ref = run_with_grads(ssd_ref, reference)
    assert y.dtype == dtype and y.shape == y_ref.shape and state.shape == state_ref.shape
    assert rel_err(y, y_ref) < tol
    assert rel_err(state, state_ref) < tol
    for name, grad, grad_ref in zip(NAMES, grads, grads_ref):
        assert rel_err(grad, grad_ref) < tol, name


def test_chunked_ssd_without_grad_runs_in_blocks(monkeypatch):
    """Forward-only evaluation walks the sequence block by block, carrying the state: same result."""
    monkeypatch.setattr(ssd_module, "EVAL_BLOCK_CHUNKS", 3)
    inputs = [t.detach() for t in ssd_inputs(150, F64)]
    with torch.no_grad():
        y, state = ssd_chunked(*inputs[:5], D=inputs[5], initial_state=inputs[6], chunk_size=4)
        y_ref, state_ref = ssd_ref(*inputs[:5], D=inputs[5], initial_state=inputs[6])
    assert rel_err(y, y_ref) < 1e-12 and rel_err(state, state_ref) < 1e-12


def test_ssd_zero_initial_state_is_default():
    x, dt, A, B, C, D, _ = (t.detach() for t in ssd_inputs(9, F64))
    y, state = ssd_chunked(x, dt, A, B, C, D, chunk_size=4)
    y0, state0 = ssd_chunked(x, dt, A, B, C, D, initial_state=torch.zeros_like(state), chunk_size=4)
    assert torch.equal(y, y0) and torch.equal(state, state0)


@pytest.mark.parametrize("dt_range", [(5.0, 50.0), (1e-4, 30.0)])
def test_chunked_ssd_long_decays_stay_finite_and_accurate(dt_range):
    """|Δ A| up to 200 per step (cumulative log-decay ~ -1e4 in a chunk of 64): float32 must not overflow."""
    inputs = ssd_inputs(100, torch.float32, dt_range=dt_range)
    y, state, grads = run_with_grads(ssd_chunked, inputs, chunk_size=64)
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    assert all(torch.isfinite(g).all() for g in grads)
    reference = [t.detach().to(F64).requires_grad_() for t in inputs]
    y_ref, state_ref, grads_ref = run_with_grads(ssd_ref, reference)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(state, state_ref) < 1e-5
    for name, grad, grad_ref in zip(NAMES, grads, grads_ref):
        assert rel_err(grad, grad_ref) < 1e-5, name


# ---------------------------------------------------------------------------------------------------------
# The model

TINY = dict(family="mamba2", vocab_size=37, d_model=16, n_layers=2, d_state=4, expand=2, d_conv=4,
            head_dim=8, n_groups=2, chunk_size=4)


def tiny_model(dtype=torch.float64, **overrides) -> RecurrentLM:
    torch.manual_seed(0)
    model = build_model(ModelConfig(**(TINY | overrides))).to(dtype)
    with torch.no_grad():                  # move off the init so that every parameter matters
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D", "conv1d.bias")):
                param.add_(0.3 * torch.randn_like(param))
    return model


def tokens(b: int, l: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (b, l), generator=torch.Generator().manual_seed(seed))


def test_state_keys_and_shapes():
    model = tiny_model()
    logits, state = model(tokens(3, 7))
    h, e = 32 // 8, 32
    assert logits.shape == (3, 7, 37)
    assert set(state) == {f"layers.{i}.{part}" for i in range(2) for part in ("conv", "ssm")}
    assert state["layers.1.conv"].shape == (3, e + 2 * 2 * 4, 3)
    assert state["layers.1.ssm"].shape == (3, h, 8, 4)
    zeros = model.initial_state(3)
    assert zeros.keys() == state.keys() and all(zeros[k].shape == state[k].shape for k in state)
    assert all(v.dtype == F64 and not v.abs().sum() for v in zeros.values())


@pytest.mark.parametrize("scan", ["chunked", "reference"])
def test_any_split_with_carried_state_equals_whole_sequence(scan):
    """Pieces of length 1 and 2 (< d_conv - 1 = 3), and ones crossing chunk boundaries."""
    model = tiny_model(scan=scan)
    seq = tokens(2, 40)
    start = model.initial_state(2)
    start = {k: torch.randn_like(v) for k, v in start.items()}          # a non-zero carried state
    whole, final = model(seq, start)
    state, pieces, t = start, [], 0
    for length in [1, 2, 1, 5, 16, 2, 13]:
        logits, state = model(seq[:, t:t + length], state)
        pieces.append(logits)
        t += length
    assert t == 40
    assert rel_err(torch.cat(pieces, dim=1), whole) < 1e-10
    for k in final:
        assert rel_err(state[k], final[k]) < 1e-10, k


def test_chunked_scan_equals_reference_scan():
    seq = tokens(2, 23)
    chunked, state_chunked = tiny_model(scan="chunked")(seq)
    ref, state_ref = tiny_model(scan="reference")(seq)
    assert rel_err(chunked, ref) < 1e-10
    assert all(rel_err(state_chunked[k], state_ref[k]) < 1e-10 for k in state_ref)


def test_continuation_from_a_saved_state_equals_concatenation(tmp_path):
    """float32: run a prefix, save the state with safetensors, load it, continue == the concatenated run."""
    model = tiny_model(torch.float32)
    first, second = tokens(3, 11, seed=1), tokens(3, 9, seed=2)
    _, state = model(first)
    save_file(state, tmp_path / "state.safetensors")        # as returned: contiguous, no views
    loaded = load_file(tmp_path / "state.safetensors")
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    continued, _ = model(second, loaded)
    whole, _ = model(torch.cat([first, second], dim=1))
    assert rel_err(continued, whole[:, 11:]) < 1e-5


def test_gradients_reach_every_parameter_and_the_initial_state():
    model = tiny_model(torch.float32)
    state = {k: v.requires_grad_() for k, v in model.initial_state(2).items()}
    logits, new_state = model(tokens(2, 10), state)
    (logits.square().mean() + sum(v.square().mean() for v in new_state.values())).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in state.values())


# ---------------------------------------------------------------------------------------------------------
# Oracle: Hugging Face transformers, a tiny random model built here (no download)


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("scan", ["chunked", "reference"])
def test_matches_transformers_mamba2(tie, scan):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.Mamba2Config(
        vocab_size=37, hidden_size=16, num_hidden_layers=2, state_size=4, expand=2, head_dim=8, num_heads=4,
        n_groups=2, conv_kernel=4, chunk_size=8, layer_norm_epsilon=1e-5, tie_word_embeddings=tie,
        use_bias=False, use_conv_bias=True, use_cache=False,
    )
    hf = transformers.Mamba2ForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D", "conv1d.bias")):
                param.add_(0.3 * torch.randn_like(param))
    ours = build_model(ModelConfig(**(TINY | dict(chunk_size=8, scan=scan))), tie_embeddings=tie).eval()
    ours.load_state_dict(hf_adapter("mamba2").from_hf(hf.state_dict()), strict=True)
    seq = tokens(2, 21)                                   # not a multiple of the chunk size
    with torch.no_grad():
        expected = hf(seq, use_cache=False).logits
        logits, _ = ours(seq)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)

