"""The Triton Mamba-1 selective scan against the float64 reference, run on the CPU by Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before the kernels are built, i.e. before ``selective_scan_triton`` is imported:
this module sets it first, so these tests run (never skip) without a GPU. The test that launches the real kernels
on CUDA runs in a subprocess without the variable, and is skipped only when no GPU is present.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

os.environ["TRITON_INTERPRET"] = "1"

import longssm.ops
from conftest import tiny_overrides
from longssm.config import ModelConfig, RunConfig, from_dict
from longssm.errors import UserError
from longssm.models import build_model, set_scan
from longssm.ops import dispatch
from longssm.ops import selective_scan_triton as sst
from longssm.ops.dispatch import resolve_scan
from longssm.ops.selective_scan import selective_scan, selective_scan_ref
from longssm.train import train

assert sst.INTERPRETED, "longssm.ops.selective_scan_triton was imported before TRITON_INTERPRET=1 was set"

CHUNK = 16
OPTIONAL = ("D", "z", "delta_bias", "initial_state")


def make_inputs(b=2, l=7, e=8, n=4, seed=0, delta_scale=1.0, a_scale=1.0) -> dict[str, torch.Tensor]:
    """float64 inputs of every argument; Δ is a softplus argument (a raw projection, as in the model)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    A = -torch.rand(e, n, generator=gen, dtype=torch.float64) * 2 * a_scale - 0.1
    return dict(u=randn(b, l, e), delta=randn(b, l, e) * delta_scale, A=A, B=randn(b, l, n), C=randn(b, l, n),
                D=randn(e), z=randn(b, l, e), delta_bias=randn(e) * 0.5, initial_state=randn(b, e, n))


def run(fn, inputs: dict[str, torch.Tensor], dtype: torch.dtype, **kw):
    """y, h_l and the gradients of a fixed random linear function of (y, h_l) w.r.t. every given input."""
    leaves = {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}
    y, h = fn(**leaves, **kw)
    gen = torch.Generator().manual_seed(123)
    wy, wh = (torch.randn(t.shape, generator=gen, dtype=torch.float64).to(dtype) for t in (y, h))
    grads = torch.autograd.grad((y * wy).sum() + (h * wh).sum(), list(leaves.values()))
    return y.detach(), h.detach(), dict(zip(leaves, grads))


def assert_rel_close(got: torch.Tensor, expected: torch.Tensor, tol: float, name: str) -> None:
    """‖got − expected‖ / max(‖expected‖, 1e-6) < tol."""
    err = (got.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-6)
    assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"


def assert_matches_reference(inputs: dict[str, torch.Tensor], tol: float = 2e-5, **kw) -> None:
    """Triton in float32 vs the reference in float64: outputs, final state and the gradient of every input."""
    y_ref, h_ref, g_ref = run(selective_scan_ref, inputs, torch.float64, delta_softplus=kw["delta_softplus"])
    y, h, g = run(sst.selective_scan_triton, inputs, torch.float32, **kw)
    assert y.dtype == h.dtype == torch.float32
    assert_rel_close(y, y_ref, tol, "y")
    assert_rel_close(h, h_ref, tol, "final state")
    for k in inputs:
        assert_rel_close(g[k], g_ref[k], tol, f"grad {k}")


@pytest.mark.parametrize("length", [1, 7, 37])  # 37 = two chunks of 16 and a partial one
@pytest.mark.parametrize("given,softplus", [(OPTIONAL, True), ((), False), (("D", "z"), True),
                                            (("delta_bias", "initial_state"), False)])
def test_matches_reference(length, given, softplus):
    x = make_inputs(l=length, seed=length)
    x = {k: v for k, v in x.items() if k not in OPTIONAL or k in given}
    if not softplus:  # keep Δ (+ bias) > 0
        x["delta"] = F.softplus(x["delta"])
        if "delta_bias" in x:
            x["delta_bias"] = x["delta_bias"].abs()
    assert_matches_reference(x, delta_softplus=softplus, chunk_size=CHUNK)


def test_several_channel_blocks_and_padded_state():
    """e = 6 in blocks of 4 (two programs per batch row, the last half empty), n = 3 padded to 4."""
    assert_matches_reference(make_inputs(l=20, e=6, n=3, seed=3), delta_softplus=True, chunk_size=8, block_e=4)


def test_long_decays_stay_finite():
    """Δ·A far below -1000 in places: exp underflows to 0, nothing overflows."""
    x = make_inputs(l=20, delta_scale=20.0, a_scale=30.0, seed=5)
    assert (F.softplus(x["delta"] + x["delta_bias"])[..., None] * x["A"]).min() < -1000
    assert_matches_reference(x, delta_softplus=True, chunk_size=CHUNK)


def test_calls_compose_and_no_grad_path_agrees():
    """Scanning [0, k) then [k, l) from the carried state, without autograd, equals one differentiable scan."""
    x = {k: v.float() for k, v in make_inputs(l=23, seed=7).items()}
    y, h, _ = run(sst.selective_scan_triton, x, torch.float32, delta_softplus=True, chunk_size=CHUNK)
    time = ("u", "delta", "B", "C", "z")
    with torch.no_grad():
        y1, h1 = sst.selective_scan_triton(**{k: v[:, :9] if k in time else v for k, v in x.items()},
                                           delta_softplus=True, chunk_size=CHUNK)
        rest = {k: v[:, 9:] if k in time else v for k, v in x.items()} | {"initial_state": h1}
        y2, h2 = sst.selective_scan_triton(**rest, delta_softplus=True, chunk_size=CHUNK)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h2, h, atol=1e-6, rtol=1e-5)


def test_dispatcher_and_empty_sequence():
    x = {k: v.float() for k, v in make_inputs(l=5).items()}
    with torch.no_grad():
        y, h = selective_scan(**x, delta_softplus=True, impl="triton")
        y_ref, h_ref = selective_scan_ref(**x, delta_softplus=True)
        torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(h, h_ref, atol=1e-6, rtol=1e-5)
        empty = {k: v[:, :0] if v.dim() == 3 and k != "initial_state" else v for k, v in x.items()}
        y, h = selective_scan(**empty, delta_softplus=True, impl="triton")
    assert y.shape == (2, 0, 8) and torch.equal(h, x["initial_state"])


def test_resolve_scan(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    assert resolve_scan("triton", cpu, kernels=("triton",)) == "triton"  # CPU: only because interpreted
    assert resolve_scan("triton", cpu) == "chunked"  # a family without the kernel
    assert resolve_scan("triton", cpu, kernels=("mamba_ssm",)) == "chunked"  # Mamba-2's kernels
    assert resolve_scan("auto", cpu, kernels=("triton",)) == "chunked"  # CPU: chunked, interpreter or not
    assert resolve_scan("auto", cuda, kernels=("triton",), dtype=torch.float64) == "chunked"  # the kernel is fp32
    assert resolve_scan("auto", cuda) == "chunked"
    assert resolve_scan("reference", cuda, kernels=("triton",)) == "reference"
    with pytest.raises(UserError, match="auto, chunked, reference, triton, mamba_ssm or fla"):
        resolve_scan("cuda", cpu)
    monkeypatch.setattr(sst, "INTERPRETED", False)
    with pytest.raises(UserError, match="runs on CUDA"):
        resolve_scan("triton", cpu, kernels=("triton",))
    monkeypatch.delattr(longssm.ops, "selective_scan_triton")  # as if triton were missing: the import fails
    monkeypatch.setitem(sys.modules, "longssm.ops.selective_scan_triton", None)
    with pytest.raises(UserError, match=r"pip install longssm\[gpu\]"):
        resolve_scan("triton", cuda, kernels=("triton",))


@pytest.fixture()
def self_check_on_cpu(monkeypatch) -> None:
    """``auto`` on a CUDA device runs the real self-check, on the CPU (the interpreter runs the kernels there); the
    per-device cache of its verdict is emptied before and after the test."""
    check = dispatch.triton_self_check
    monkeypatch.setattr(dispatch, "triton_self_check", lambda device: check(torch.device("cpu")))
    dispatch._triton_passes_self_check.cache_clear()
    yield
    dispatch._triton_passes_self_check.cache_clear()


@pytest.mark.slow
def test_self_check_passes_under_the_interpreter():
    rng = torch.get_rng_state()
    assert dispatch.triton_self_check(torch.device("cpu")) is None
    assert torch.equal(torch.get_rng_state(), rng), "the self-check must not consume the caller's random stream"


@pytest.mark.slow
def test_auto_picks_triton_on_cuda_after_the_self_check(self_check_on_cpu):
    cuda = torch.device("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_scan("auto", cuda, kernels=("triton",)) == "triton"
        assert resolve_scan("auto", cuda, kernels=("triton",), dtype=torch.float32) == "triton"
        assert resolve_scan("auto", cuda, kernels=("triton",), dtype=torch.float64) == "chunked"
        assert resolve_scan("auto", torch.device("cpu"), kernels=("triton",)) == "chunked"


def scaled(which: int, factor: float):
    """A Triton scan whose y (``which`` = 0) or final state (1) is multiplied by ``factor``."""
    original = sst.selective_scan_triton

    def kernel(*args, **kwargs):
        out = list(original(*args, **kwargs))
        out[which] = out[which] * factor
        return tuple(out)

    return kernel


def raising(*args, **kwargs):
    raise RuntimeError("PTX JIT compilation failed\nptxas fatal: unresolved symbol")


@pytest.mark.slow
@pytest.mark.parametrize("kernel,reason", [
    (raising, r"\(RuntimeError: PTX JIT compilation failed\); using chunked$"),
    (scaled(0, 1.001), r"\(y off by 1\.0e-03 \(relative\)\)"),
    (scaled(1, -1.0), r"\(final state off by 2\.0e\+00 \(relative\)\)"),
    (scaled(0, float("nan")), r"\(y off by nan \(relative\)\)"),
])
def test_auto_falls_back_to_chunked_with_one_warning(monkeypatch, self_check_on_cpu, kernel, reason):
    """A kernel that raises or computes wrong numbers: ``auto`` warns once, naming why, and runs ``chunked``."""
    monkeypatch.setattr(sst, "selective_scan_triton", kernel)
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match="self-check on cuda " + reason) as record:
        assert resolve_scan("auto", cuda, kernels=("triton",)) == "chunked"
    assert len(record) == 1 and "\n" not in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per device: the verdict is cached, no second warning
        assert resolve_scan("auto", cuda, kernels=("triton",)) == "chunked"
    assert resolve_scan("triton", torch.device("cpu"), kernels=("triton",)) == "triton"  # explicit: no self-check


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without a GPU")
def test_auto_on_a_missing_gpu_warns_and_runs_chunked():
    dispatch._triton_passes_self_check.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"self-check on cuda:7 \(\w+Error: .+\); using chunked"):
            assert resolve_scan("auto", torch.device("cuda", 7), kernels=("triton",)) == "chunked"
    finally:
        dispatch._triton_passes_self_check.cache_clear()


def test_auto_without_triton_runs_chunked_silently(monkeypatch, self_check_on_cpu):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_scan("auto", torch.device("cuda"), kernels=("triton",)) == "chunked"


@pytest.fixture()
def triton_calls(monkeypatch) -> list[int]:
    """Counts the calls of the Triton scan (the dispatcher imports it at call time, so it calls the wrapper)."""
    calls: list[int] = []
    original = sst.selective_scan_triton

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(sst, "selective_scan_triton", counted)
    return calls


@pytest.mark.parametrize("family", ["mamba2", "s5", "gru"])
def test_other_families_run_chunked_for_triton(family, triton_calls):
    sizes = dict(family=family, vocab_size=19, d_model=8, n_layers=1, d_state=4, head_dim=4, chunk_size=4)
    tokens = torch.randint(0, 19, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = build_model(ModelConfig(**sizes, scan="triton")).eval()
    logits, state = model(tokens)
    set_scan(model, "chunked")
    logits_chunked, state_chunked = model(tokens)
    assert torch.equal(logits, logits_chunked) and all(torch.equal(state[k], state_chunked[k]) for k in state)
    assert not triton_calls


@pytest.mark.slow
def test_tiny_training_run_matches_reference(tmp_path, corpus_file, triton_calls):
    """``model.scan triton`` (interpreted) and ``reference`` give the same loss at every step of a tiny run."""
    losses: dict[str, list[float]] = {}
    for scan in ("reference", "triton"):
        cfg = from_dict(RunConfig, tiny_overrides(corpus_file, tmp_path / "cache", model__scan=scan,
                                                  train__steps=6, model__dropout=0.0))
        losses[scan] = []
        train(cfg, tmp_path / scan, on_step=lambda step, loss, scan=scan: losses[scan].append(loss))
    assert triton_calls, 'model.scan triton did not reach the kernels: MambaMixer declares fast_kernels = ("triton",)?'
    assert len(losses["triton"]) == 6
    for step, (ref, tri) in enumerate(zip(losses["reference"], losses["triton"]), 1):
        assert abs(tri - ref) < 1e-5, f"step {step}: triton {tri} vs reference {ref}"


COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from longssm.ops import selective_scan_triton as sst

assert not sst.INTERPRETED
for kernel in (sst._selective_scan_fwd_kernel, sst._selective_scan_bwd_kernel):
    for flag in (True, False):
        constexprs = {p.name: flag for p in kernel.params if p.is_constexpr} | dict(CHUNK=32, BLOCK_E=32, BLOCK_N=16)
        signature = {name: "constexpr" if name in constexprs else "i32" if name in ("L", "E", "N") else "*fp32"
                     for name in kernel.arg_names}
        source = ASTSource(kernel, signature, {(kernel.arg_names.index(k),): v for k, v in constexprs.items()})
        triton.compile(source, target=GPUTarget("cuda", 90, 32))
print("ok")
"""


@pytest.mark.slow
def test_kernels_compile_for_a_gpu_without_one():
    """The interpreter runs Python, not Triton's compiler: build both kernels down to sm_90 machine code (every
    flag on, then off) in a process without TRITON_INTERPRET, so that CI also checks what a GPU would run."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-4000:]


GPU_SCRIPT = """
import torch
from longssm.ops.selective_scan import selective_scan_ref
from longssm.ops.selective_scan_triton import INTERPRETED, selective_scan_triton

assert not INTERPRETED
gen = torch.Generator().manual_seed(0)
for l in (1, 37, 300):
    b, e, n = 3, 70, 16
    shapes = dict(u=(b, l, e), delta=(b, l, e), A=(e, n), B=(b, l, n), C=(b, l, n), D=(e,), z=(b, l, e),
                  delta_bias=(e,), initial_state=(b, e, n))
    x = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    x["A"] = -x["A"].abs() - 0.1
    wy, wh = (torch.randn(s, generator=gen, dtype=torch.float64) for s in ((b, l, e), (b, e, n)))
    results = []
    for fn, device, dtype in ((selective_scan_ref, "cpu", torch.float64),
                              (selective_scan_triton, "cuda", torch.float32)):
        leaves = {k: v.to(device, dtype).requires_grad_() for k, v in x.items()}
        y, h = fn(**leaves, delta_softplus=True)
        loss = (y * wy.to(device, dtype)).sum() + (h * wh.to(device, dtype)).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()))
        results.append([t.detach().double().cpu() for t in (y, h, *grads)])
    for name, ref, got in zip(["y", "h", *x], *results):
        err = ((got - ref).norm() / ref.norm().clamp_min(1e-6)).item()
        assert err < 5e-5, f"l={l} {name}: relative error {err:.1e}"
print("ok")
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="launches the compiled kernels: needs a CUDA GPU")
def test_compiled_kernels_on_cuda():
    """The compiled kernels on a GPU against the float64 reference, in a process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", GPU_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-4000:]
