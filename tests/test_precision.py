"""Half-precision autocast keeps carried states in float32 (issue 15: "bf16 autocast, states kept in float32").

CPU autocast to bfloat16 stands in for CUDA here: it casts the same ops (linear layers, matmuls) to half precision.
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_overrides
from longssm import checkpoint as ckpt_io
from longssm.config import ModelConfig, RunConfig, from_dict
from longssm.models import build_model
from longssm.ops.selective_scan import selective_scan
from longssm.train import setup as train_setup
from longssm.train import train

FAMILIES = ["mamba", "mamba2", "s5", "gru", "lstm"]


@pytest.mark.parametrize("family", FAMILIES)
def test_autocast_returns_float32_states_that_track_the_float32_model(family):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, d_model=32, n_layers=2, vocab_size=50)).eval()
    tokens = torch.randint(0, 50, (2, 96))
    with torch.no_grad():
        _, exact = model(tokens)
        state = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for window in tokens.split(16, dim=1):  # six windows, the state carried across every boundary
                logits, state = model(window, state)
    assert logits.dtype == torch.bfloat16  # autocast did act on the model
    assert {k: v.dtype for k, v in state.items()} == {k: v.dtype for k, v in exact.items()}
    assert all(v.dtype in (torch.float32, torch.complex64) for v in state.values())
    for key, h in state.items():  # bf16 matmuls perturb the state by ~1e-2 relative, never by rounding drift
        scale = exact[key].abs().max().clamp_min(1e-3)
        assert (h - exact[key]).abs().max() / scale < 0.1, key


def test_half_precision_selective_scan_runs_in_float32():
    torch.manual_seed(1)
    b, l, e, n = 2, 37, 8, 4
    u, delta, z = (torch.randn(b, l, e).bfloat16() for _ in range(3))
    B, C = (torch.randn(b, l, n).bfloat16() for _ in range(2))
    A = -torch.rand(e, n) - 0.5
    D = torch.randn(e)
    h0 = torch.randn(b, e, n)
    for impl in ("chunked", "reference"):
        y, h = selective_scan(u, delta, A, B, C, D=D, z=z, delta_softplus=True, initial_state=h0, impl=impl)
        y32, h32 = selective_scan(u.float(), delta.float(), A, B.float(), C.float(), D=D, z=z.float(),
                                  delta_softplus=True, initial_state=h0, impl=impl)
        assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
        assert torch.equal(h, h32)  # the same float32 computation on the same (bf16-representable) inputs
        assert torch.equal(y, y32.bfloat16())


def test_bfloat16_training_carries_float32_states(tmp_path, corpus_file, monkeypatch):
    # CPU runs refuse half precision; autocast to bfloat16 on the CPU stands in for CUDA
    monkeypatch.setattr(train_setup, "autocast_for", lambda device, dtype: torch.autocast("cpu", dtype=torch.bfloat16))
    cfg = from_dict(RunConfig, tiny_overrides(corpus_file, tmp_path / "cache", train__dtype="bfloat16",
                                              state__scheme="previous", train__steps=4, train__checkpoint_every=4))
    losses: dict[int, float] = {}
    train(cfg, tmp_path / "run", on_step=lambda s, loss: losses.__setitem__(s, loss))
    assert sorted(losses) == [1, 2, 3, 4] and all(loss == loss for loss in losses.values())
    states = ckpt_io.read_tensors(tmp_path / "run" / "checkpoints" / "step-00000004" / "states.safetensors")
    carried = [v for k, v in states.items() if "layers." in k]
    assert carried and all(v.dtype == torch.float32 for v in carried)
