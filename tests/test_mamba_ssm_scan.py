"""``model.scan mamba_ssm``: the adapter onto ``mamba_ssm``'s fused SSD kernel against our SSD, and how it is chosen.

Two oracles for the kernel's side of the mapping:

* ``fake_kernel`` (always runs): ``mamba_chunk_scan_combined``'s documented semantics, written here independently
  as a float64 loop over time in its (b, l, h, p) layout with its exact signature, so that a wrong argument name,
  layout, initial or final state shows up without the package.
* ``real_kernel`` (runs whenever the mamba-ssm distribution is installed, even a CPU-only build): the package's own
  Triton kernels on CPU tensors under Triton's interpreter. A CPU install that works (about 10 s, no compiler):

    MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation --no-deps mamba-ssm==2.3.2.post1

  (``MAMBA_FORCE_BUILD`` skips setup.py's download of a prebuilt CUDA wheel, which fails on a CPU-only torch;
  ``--no-deps`` skips tilelang and quack-kernels, which the SSD kernels do not import; triton and einops are needed.)

``TRITON_INTERPRET=1`` must be set before the kernels are built: this module sets it before importing anything.
"""

from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

os.environ["TRITON_INTERPRET"] = "1"

from longssm.errors import UserError
from longssm.models import set_scan
from longssm.ops import dispatch, ssd_mamba_ssm
from longssm.ops.dispatch import resolve_scan
from longssm.ops.ssd import ssd_ref
from longssm.ops.ssd_mamba_ssm import ssd_mamba_ssm as ssd_adapter
from mamba_ssm_cpu import interpreted
from test_mamba2 import NAMES, rel_err, run_with_grads, ssd_inputs, tiny_model, tokens

F64 = torch.float64
CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


def fake_mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                                   seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                                   return_final_states=False, return_varlen_states=False):
    """``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined`` as its docstring and reference define it, one
    step at a time in float64 (``chunk_size`` only tiles the real kernel's work, so it changes nothing here):

        Δ = clamp(softplus?(dt + dt_bias), dt_limit),   s_t = exp(Δ_t A) s_{t-1} + Δ_t x_t B_t^T,
        out_t = s_t C_t + D x_t   (times silu(z_t) when z is given; head i reads group i // (h / g))

    x, z (b, l, h, p), dt (b, l, h), A (h,), B, C (b, l, g, n), D (h,) or (h, p), initial_states (b, h, p, n)
    -> out (b, l, h, p) in x's dtype [, final_states (b, h, p, n) float32].
    """
    assert seq_idx is None and cu_seqlens is None and not return_varlen_states, "not used by longssm"
    b, l, h, p = x.shape
    group = torch.arange(h) // (h // B.shape[2])                    # head -> its group of B, C
    delta = dt.double() + (0 if dt_bias is None else dt_bias.double())
    delta = (F.softplus(delta) if dt_softplus else delta).clamp(*dt_limit)
    s = x.new_zeros(b, h, p, B.shape[3], dtype=F64) if initial_states is None else initial_states.double()
    out = []
    for t in range(l):
        x_t, B_t, C_t = x[:, t].double(), B[:, t, group].double(), C[:, t, group].double()   # (b, h, p), (b, h, n)
        s = torch.exp(delta[:, t] * A.double())[:, :, None, None] * s + torch.einsum(
            "bh,bhp,bhn->bhpn", delta[:, t], x_t, B_t)
        y_t = torch.einsum("bhpn,bhn->bhp", s, C_t)
        if D is not None:
            y_t = y_t + (D.double() if D.dim() == 2 else D.double()[:, None]) * x_t
        if z is not None:
            y_t = y_t * F.silu(z[:, t].double())
        out.append(y_t)
    out = (torch.stack(out, dim=1) if out else x.new_zeros(b, 0, h, p, dtype=F64)).to(x.dtype)
    return (out, s.float()) if return_final_states else out


@pytest.fixture()
def fake_kernel(monkeypatch) -> list[dict]:
    """``ssd_mamba_ssm`` runs ``fake_mamba_chunk_scan_combined``; returns the keyword arguments of every call."""
    calls: list[dict] = []

    def kernel(*args, **kwargs):
        calls.append(dict(zip(("x", "dt", "A", "B", "C", "chunk_size"), args)) | kwargs)
        return fake_mamba_chunk_scan_combined(*args, **kwargs)

    monkeypatch.setattr(ssd_mamba_ssm, "load", lambda: kernel)
    monkeypatch.setattr(dispatch, "mamba_ssm_unavailable", lambda kernel="mamba_ssm": None)
    monkeypatch.setattr(dispatch, "triton_interpreted", lambda: True)  # the fake takes CPU tensors
    return calls


@pytest.fixture(scope="module")
def real_kernel():
    """The package's own ``mamba_chunk_scan_combined`` on CPU tensors under Triton's interpreter
    (``mamba_ssm_cpu.interpreted``); skipped when the mamba-ssm distribution is not installed."""
    with interpreted(["mamba_ssm.ops.triton.ssd_combined"]) as (module,):
        kernel = module.mamba_chunk_scan_combined
        ssd_mamba_ssm.load.cache_clear()
        dispatch.mamba_ssm_unavailable.cache_clear()
        assert dispatch.mamba_ssm_unavailable() is None and ssd_mamba_ssm.load() is kernel
        assert dispatch.triton_interpreted(), "TRITON_INTERPRET=1 was not set before triton read it"
        yield kernel
    ssd_mamba_ssm.load.cache_clear()
    dispatch.mamba_ssm_unavailable.cache_clear()


def assert_matches_reference(l: int, chunk_size: int, tol: float) -> None:
    """The adapter in float32 against ``ssd_ref`` in float64: y, the final state and the gradient of every input."""
    inputs = ssd_inputs(l, torch.float32)
    y, state, grads = run_with_grads(ssd_adapter, inputs, chunk_size=chunk_size)
    y_ref, state_ref, grads_ref = run_with_grads(ssd_ref, [t.detach().to(F64).requires_grad_() for t in inputs])
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    assert state.dtype == torch.float32 and state.shape == state_ref.shape
    assert rel_err(y, y_ref) < tol and rel_err(state, state_ref) < tol
    for name, grad, grad_ref in zip(NAMES, grads, grads_ref):
        assert rel_err(grad, grad_ref) < tol, name


def assert_model_matches_chunked(l: int) -> None:
    """A one-layer float32 Mamba-2 with ``model.scan mamba_ssm`` against ``chunked`` (the same weights): logits,
    state and every parameter's gradient from a non-zero carried state; then the TBPTT invariant (two pieces with
    the carried state == the whole sequence)."""
    model = tiny_model(torch.float32, n_layers=1, scan="mamba_ssm")
    seq = tokens(2, l)
    gen = torch.Generator().manual_seed(2)
    start = {k: torch.randn(v.shape, generator=gen) for k, v in model.initial_state(2).items()}
    results = {}
    for scan in ("mamba_ssm", "chunked"):
        set_scan(model, scan)
        logits, state = model(seq, start)
        loss = (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))).sum()
        loss = loss + sum(v.sum() for v in state.values())
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results[scan] = logits, state, grads
    (logits, state, grads), (logits_ref, state_ref, grads_ref) = results["mamba_ssm"], results["chunked"]
    assert rel_err(logits, logits_ref) < 1e-5
    assert all(rel_err(state[k], state_ref[k]) < 1e-5 for k in state_ref)
    for (name, _), grad, grad_ref in zip(model.named_parameters(), grads, grads_ref):
        assert rel_err(grad, grad_ref) < 1e-5, name
    set_scan(model, "mamba_ssm")
    with torch.no_grad():
        first, carried = model(seq[:, :5], start)
        second, final = model(seq[:, 5:], carried)
    assert rel_err(torch.cat([first, second], dim=1), logits) < 1e-5
    assert all(rel_err(final[k], state[k]) < 1e-5 for k in state)


# ---- the mapping, against the independent fake kernel (no mamba_ssm needed) ----

@pytest.mark.parametrize("l", [1, 4, 13])  # 13: three chunks of 4 and a partial one
def test_adapter_matches_reference_with_fake_kernel(fake_kernel, l):
    assert_matches_reference(l, chunk_size=4, tol=1e-5)
    call = fake_kernel[0]
    assert call["chunk_size"] == 4 and call["A"].dtype == torch.float32
    assert call["return_final_states"] and not call["dt_softplus"] and "dt_bias" not in call  # Δ is post-softplus
    assert call["initial_states"].shape == (2, 4, 3, 5) and "z" not in call  # the gate is the mixer's RMSNorm


def test_adapter_empty_sequence_and_zero_initial_state(fake_kernel):
    x, dt, A, B, C, D, h0 = (t.detach() for t in ssd_inputs(0, torch.float32))
    y, state = ssd_adapter(x, dt, A, B, C, D=D, initial_state=h0)
    assert y.shape == (2, 0, 4, 3) and torch.equal(state, h0) and not fake_kernel  # no kernel launch at l = 0
    x, dt, A, B, C, D, _ = (t.detach() for t in ssd_inputs(7, torch.float32))
    y, state = ssd_adapter(x, dt, A, B, C, D=D, chunk_size=4)
    y_ref, state_ref = ssd_ref(x, dt, A, B, C, D=D)
    assert fake_kernel[0]["initial_states"] is None
    assert rel_err(y, y_ref) < 1e-5 and rel_err(state, state_ref) < 1e-5


def test_adapter_refuses_float64(fake_kernel):
    with pytest.raises(UserError, match=r"computes in float32 and this model is float64: use model\.scan chunked"):
        ssd_adapter(*(t.detach() for t in ssd_inputs(5, F64)[:5]))
    model = tiny_model(F64, n_layers=1, scan="mamba_ssm")
    with pytest.raises(UserError, match=r"model\.scan mamba_ssm computes in float32"):
        model(tokens(1, 3))


def test_model_with_fake_kernel_matches_chunked(fake_kernel):
    assert_model_matches_chunked(11)
    assert fake_kernel, "model.scan mamba_ssm did not reach the kernel: does Mamba2Mixer declare its fast_kernels?"


# ---- how model.scan picks it ----

def test_resolve_scan_when_mamba_ssm_imports(monkeypatch):
    monkeypatch.setattr(dispatch, "mamba_ssm_unavailable", lambda kernel="mamba_ssm": None)
    monkeypatch.setattr(dispatch, "triton_interpreted", lambda: False)
    kernels = ("mamba_ssm",)
    assert resolve_scan("auto", CUDA, kernels) == "mamba_ssm"
    assert resolve_scan("auto", CUDA, kernels, dtype=torch.bfloat16) == "mamba_ssm"
    assert resolve_scan("auto", CUDA, kernels, dtype=F64) == "chunked"  # the kernels compute in float32
    assert resolve_scan("auto", CPU, kernels) == "chunked"
    assert resolve_scan("mamba_ssm", CUDA, kernels) == "mamba_ssm"
    assert resolve_scan("reference", CUDA, kernels) == "reference"
    assert resolve_scan("mamba_ssm", CUDA) == "chunked"  # a family without the kernel (S5, GRU, LSTM)
    assert resolve_scan("mamba_ssm", CUDA, ("triton",)) == "chunked"  # Mamba-1
    with pytest.raises(UserError, match=r"model\.scan mamba_ssm runs on CUDA devices .* the model is on cpu"):
        resolve_scan("mamba_ssm", CPU, kernels)
    monkeypatch.setattr(dispatch, "triton_interpreted", lambda: True)
    assert resolve_scan("mamba_ssm", CPU, kernels) == "mamba_ssm"  # the tests' case
    assert resolve_scan("auto", CPU, kernels) == "chunked"


def test_resolve_scan_when_mamba_ssm_is_missing(monkeypatch):
    # its import fails as when not installed (submodules too: another library may have imported them already)
    for name in [k for k in sys.modules if k.startswith("mamba_ssm.")] + ["mamba_ssm"]:
        monkeypatch.setitem(sys.modules, name, None)
    ssd_mamba_ssm.load.cache_clear()
    dispatch.mamba_ssm_unavailable.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert resolve_scan("auto", CUDA, ("mamba_ssm",)) == "chunked"  # silently: the package is optional
        with pytest.raises(UserError, match=r"^model\.scan mamba_ssm needs the mamba_ssm package "
                                            r"\(pip install mamba-ssm\): ModuleNotFoundError: .*mamba_ssm"):
            resolve_scan("mamba_ssm", CUDA, ("mamba_ssm",))
        with pytest.raises(UserError, match="needs the mamba_ssm package"):  # when the model is built
            tiny_model(torch.float32, n_layers=1, scan="mamba_ssm")
    finally:
        ssd_mamba_ssm.load.cache_clear()
        dispatch.mamba_ssm_unavailable.cache_clear()


# ---- the package's own kernel, interpreted on the CPU ----

@pytest.mark.slow
@pytest.mark.parametrize("l,chunk_size", [(13, 4), (3, 8), (11, 6)])  # partial chunk; l < chunk; no power of 2
def test_adapter_matches_reference_with_real_kernel(real_kernel, l, chunk_size):
    assert_matches_reference(l, chunk_size, tol=2e-5)


@pytest.mark.slow
def test_model_with_real_kernel_matches_chunked(real_kernel):
    assert_model_matches_chunked(11)
