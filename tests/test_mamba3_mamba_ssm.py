"""``model.scan mamba_ssm`` for Mamba-3: the adapter onto mamba_ssm's ``mamba3_siso_combined`` against our op, a
weight copy from mamba_ssm's ``Mamba3`` module, and how the kernel is chosen.

Two oracles for the kernel's side, as for Mamba-2 (``test_mamba_ssm_scan.py``):

* ``fake_kernel`` (always runs): ``mamba3_siso_combined``'s documented semantics written here independently as a
  float64 loop in its own layout (grouped Q/K heads, per-head biases, (b, h, l) decays, raw angles, Z gate) with
  its exact signature: values, final states and every gradient through the adapter.
* ``real_kernel`` (whenever mamba-ssm is installed, even a CPU build): the package's kernels under Triton's
  interpreter with the stubs of ``mamba_ssm_cpu``. The kernel rounds its inputs to bfloat16, so it agrees with
  our float64 op to ~1e-2; a wrong mapping (B for C, a missing bias, a decay in the wrong layout) is off by ~1.
  Its backward kernels use bfloat16 arithmetic that the interpreter computes wrongly: gradients of the real kernel
  are checked on a GPU (``benchmarks/gpu_check.py``), not here.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

os.environ["TRITON_INTERPRET"] = "1"

from longssm.config import ModelConfig
from longssm.errors import UserError
from longssm.models.mamba3 import Mamba3Mixer
from longssm.ops import dispatch, mamba3_mamba_ssm
from longssm.ops.dispatch import resolve_scan
from longssm.ops.mamba3 import Mamba3State, mamba3_chunked
from longssm.ops.mamba3_mamba_ssm import mamba3_mamba_ssm as adapter
from mamba_ssm_cpu import interpreted
from test_mamba3 import NAMES, inputs, run

F64 = torch.float64
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def fake_mamba3_siso_combined(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D=None, Z=None, Input_States=None,
                              chunk_size=64, return_final_states=False, cu_seqlens=None):
    """``mamba_ssm.ops.triton.mamba3.mamba3_siso_combined`` as its docstring and step kernel define it, one token
    at a time in float64: per head i (reading Q/K head i // (h / h_qk)),

        θ_t = θ_{t-1} + π tanh(Angles_t) DT_t,   q̃ = R(θ_t)(Q_t + Q_bias),   k̃ = R(θ_t)(K_t + K_bias)
        λ = sigmoid(Trap_t), α = exp(ADT_t),   s_t = α s_{t-1} + α DT_t (1 - λ) v_{t-1} k̃_{t-1}^T + λ DT_t V_t k̃^T
        out_t = (s_t q̃ + D V_t) * silu(Z_t)

    with R rotating the pairs (2j, 2j+1), j < S, by θ_j (the rest unrotated) and (θ, s, k̃, v) started from
    Input_States. Returns out (b, l, h, p) [, θ, s, k̃, v]."""
    assert cu_seqlens is None, "not used by longssm"
    b, l, h, p = V.shape
    n, S = Q.shape[-1], Angles.shape[-1]
    head = torch.arange(h) // (h // Q.shape[2])
    if Input_States is None:
        Input_States = (V.new_zeros(b, h, S), V.new_zeros(b, h, p, n), V.new_zeros(b, h, n), V.new_zeros(b, h, p))
    theta, s, k_prev, v_prev = (t.double() for t in Input_States)
    outs = []
    for t in range(l):
        theta = torch.remainder(theta + math.pi * torch.tanh(Angles[:, t].double()) * DT[:, :, t, None].double(),
                                2 * math.pi)
        cos, sin = torch.ones(b, h, n // 2, dtype=F64), torch.zeros(b, h, n // 2, dtype=F64)
        cos[..., :S], sin[..., :S] = theta.cos(), theta.sin()

        def rot(u, cos=cos, sin=sin):
            u0, u1 = u[..., 0::2], u[..., 1::2]
            return torch.stack((u0 * cos - u1 * sin, u0 * sin + u1 * cos), dim=-1).flatten(-2)

        q = rot(Q[:, t, head].double() + Q_bias.double())
        k = rot(K[:, t, head].double() + K_bias.double())
        lam, alpha, dt = torch.sigmoid(Trap[:, :, t].double()), ADT[:, :, t].double().exp(), DT[:, :, t].double()
        v = V[:, t].double()
        s = (alpha[..., None, None] * s
             + (alpha * dt * (1 - lam))[..., None, None] * v_prev[..., None] * k_prev[:, :, None]
             + (lam * dt)[..., None, None] * v[..., None] * k[:, :, None])
        out = torch.einsum("bhpn,bhn->bhp", s, q) + (0 if D is None else D.double()[:, None] * v)
        outs.append(out if Z is None else out * F.silu(Z[:, t].double()))
        k_prev, v_prev = k, v
    out = torch.stack(outs, 1).to(V.dtype)
    return (out, theta.float(), s.float(), k_prev.float(), v_prev.float()) if return_final_states else out


@pytest.fixture()
def fake_kernel(monkeypatch) -> list[dict]:
    """``mamba3_mamba_ssm`` runs ``fake_mamba3_siso_combined``; returns the keyword arguments of every call."""
    calls: list[dict] = []

    def kernel(*args, **kwargs):
        calls.append(dict(zip(("Q", "K", "V", "ADT", "DT", "Trap", "Q_bias", "K_bias", "Angles"), args)) | kwargs)
        return fake_mamba3_siso_combined(*args, **kwargs)

    monkeypatch.setattr(mamba3_mamba_ssm, "load", lambda: kernel)
    return calls


@pytest.fixture(scope="module")
def real_kernel():
    """The package's ``mamba3_siso_combined`` and ``Mamba3`` module under Triton's interpreter."""
    with interpreted(["mamba_ssm.ops.triton.mamba3.mamba3_siso_combined", "mamba_ssm.modules.mamba3"],
                     mamba3_shims=True) as (combined, module):
        mamba3_mamba_ssm.load.cache_clear()
        assert mamba3_mamba_ssm.load() is combined.mamba3_siso_combined
        yield module.Mamba3
    mamba3_mamba_ssm.load.cache_clear()
    dispatch.mamba_ssm_unavailable.cache_clear()


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def angle_rel(a, b) -> float:
    """Relative error of angles mod 2π (either side may have wrapped)."""
    return (torch.remainder(a.double() - b.double() + math.pi, 2 * math.pi) - math.pi).norm().item() / b.norm().item()


def float32(ins: dict, state: Mamba3State) -> tuple[dict, Mamba3State]:
    return {k: v.float() for k, v in ins.items()}, Mamba3State(*(t.float() for t in state))


@pytest.mark.parametrize("l", [1, 9, 37])
def test_adapter_matches_our_op_with_fake_kernel(fake_kernel, l):
    ins, state = inputs(l)
    y1, s1, g1 = run(mamba3_chunked, ins, state)
    y2, s2, g2 = run(adapter, *float32(ins, state), chunk_size=16)
    assert rel(y2, y1) < 1e-5 and angle_rel(s2.angle, s1.angle) < 1e-5
    assert all(rel(a, b) < 1e-5 for a, b in zip(s2[1:], s1[1:]))
    for name, a, b in zip([*NAMES, *(f"initial {f}" for f in Mamba3State._fields)], g2, g1):
        assert rel(a, b) < 1e-5, name
    call = fake_kernel[0]
    assert call["return_final_states"] and call["Z"] is None and call["chunk_size"] == 16
    assert call["ADT"].shape == call["DT"].shape == call["Trap"].shape == (2, 3, l)  # (b, h, l)
    assert not call["Q_bias"].any() and not call["K_bias"].any()  # the mixer adds the biases per head


def test_adapter_refuses_float64_and_passes_an_empty_sequence(fake_kernel):
    ins, state = inputs(0)
    with pytest.raises(UserError, match=r"float64: use model\.scan chunked"):
        adapter(**ins, initial_state=state)
    y, final = adapter(**float32(ins, state)[0], initial_state=float32(ins, state)[1])
    assert y.shape == (2, 0, 3, 4) and torch.equal(final.ssm, state.ssm.float()) and not fake_kernel


def test_self_check_passes_with_a_right_kernel_and_names_a_wrong_one(fake_kernel, monkeypatch):
    assert mamba3_mamba_ssm.self_check(CPU) is None

    def no_trapezoid(*args, **kwargs):  # Euler's rule instead of the trapezoid
        args = list(args)
        args[5] = args[5] + 30.0  # λ = 1
        return fake_mamba3_siso_combined(*args, **kwargs)

    monkeypatch.setattr(mamba3_mamba_ssm, "load", lambda: no_trapezoid)
    assert mamba3_mamba_ssm.self_check(CPU).startswith("y off by")


@pytest.mark.slow
@pytest.mark.parametrize("l, chunk", [(16, 16), (37, 16), (5, 16)])  # one chunk; a partial third; l < chunk
def test_real_kernel_matches_our_op_on_values_and_final_states(real_kernel, l, chunk):
    ins, state = inputs(l, seed=3, p=16, n=16, s=4)  # the kernel's TMA blocks need 16 bytes of bfloat16
    with torch.no_grad():
        y, final = adapter(**float32(ins, state)[0], initial_state=float32(ins, state)[1], chunk_size=chunk)
        y_ref, ref = mamba3_chunked(**ins, initial_state=state)
    assert rel(y, y_ref) < 3e-2 and angle_rel(final.angle, ref.angle) < 1e-2, (rel(y, y_ref),)
    for name, a, b in zip(Mamba3State._fields[1:], final[1:], ref[1:]):
        assert rel(a, b) < 3e-2, name
    swapped = dict(ins, B=ins["C"], C=ins["B"])  # a mapping that is wrong by a swap is far off
    with torch.no_grad():
        y_bad, _ = adapter(**float32(swapped, state)[0], initial_state=float32(ins, state)[1], chunk_size=chunk)
    assert rel(y_bad, y_ref) > 0.3


@pytest.mark.slow
def test_weights_copied_from_mamba_ssm_mamba3_module_give_its_outputs(real_kernel):
    torch.manual_seed(0)
    d, n, p = 32, 16, 16
    theirs = real_kernel(d_model=d, d_state=n, expand=2, headdim=p, ngroups=1, chunk_size=16)
    ours = Mamba3Mixer(ModelConfig(family="mamba3", d_model=d, d_state=n, head_dim=p, expand=2, n_layers=1), 0)
    ours.scan_impl = "chunked"
    with torch.no_grad():
        for param in ours.parameters():
            param.add_(0.1 * torch.randn_like(param))  # every parameter away from its initial value
        theirs.load_state_dict(ours.state_dict(), strict=True)  # the same names and shapes
        u = torch.randn(2, 37, d)
        expected = theirs(u)
        y, _ = ours(u, {k: torch.zeros(2, *s) for k, s in ours.state_shapes().items()})
        assert rel(y, expected) < 3e-2
        ours.D.add_(1.0)
        assert rel(ours(u, {k: torch.zeros(2, *s) for k, s in ours.state_shapes().items()})[0], expected) > 0.1


# ---- how model.scan picks it ----

def test_resolve_scan_for_mamba3(monkeypatch):
    kernels = Mamba3Mixer.fast_kernels
    monkeypatch.setattr(dispatch, "mamba_ssm_unavailable", lambda kernel="mamba_ssm": None)
    monkeypatch.setattr(dispatch, "triton_interpreted", lambda: False)
    monkeypatch.setattr(dispatch, "_mamba3_passes_self_check", lambda device: True)
    assert resolve_scan("auto", CUDA, kernels) == "mamba_ssm"
    assert resolve_scan("auto", CPU, kernels) == "chunked"
    assert resolve_scan("auto", CUDA, kernels, dtype=F64) == "chunked"
    assert resolve_scan("mamba_ssm", CUDA, kernels) == "mamba_ssm"
    with pytest.raises(UserError, match=r"model\.scan mamba_ssm runs on CUDA devices"):
        resolve_scan("mamba_ssm", CPU, kernels)
    monkeypatch.setattr(dispatch, "_mamba3_passes_self_check", lambda device: False)
    assert resolve_scan("auto", CUDA, kernels) == "chunked"  # a failed self-check
    seen = []
    monkeypatch.setattr(dispatch, "mamba_ssm_unavailable",
                        lambda kernel="mamba_ssm": seen.append(kernel) or "ImportError: no mamba3 here")
    with pytest.raises(UserError, match=r"needs the mamba_ssm package .*: ImportError: no mamba3 here"):
        resolve_scan("mamba_ssm", CUDA, kernels)
    assert seen == ["mamba_ssm_mamba3"]  # Mamba-3's kernel is checked, not Mamba-2's


def test_model_with_fake_kernel_matches_chunked(fake_kernel, monkeypatch):
    from longssm.models import build_model, set_scan

    monkeypatch.setattr(dispatch, "mamba_ssm_unavailable", lambda kernel="mamba_ssm": None)
    monkeypatch.setattr(dispatch, "triton_interpreted", lambda: True)  # the fake takes CPU tensors
    cfg = ModelConfig(family="mamba3", d_model=16, n_layers=2, d_state=8, head_dim=8, vocab_size=40,
                      scan="mamba_ssm")
    model = build_model(cfg)
    tokens = torch.randint(0, 40, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, state = model(tokens, model.initial_state(2))
        assert fake_kernel, "model.scan mamba_ssm did not reach the kernel"
        set_scan(model, "chunked")
        logits_ref, state_ref = model(tokens, model.initial_state(2))
    assert rel(logits, logits_ref) < 1e-5
    assert all(rel(state[k], state_ref[k]) < 1e-5 for k in state_ref if not k.endswith("angle"))
