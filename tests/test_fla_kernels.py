"""``model.scan fla``: the call into fla's chunk kernels (argument layout, state shapes, scale, dtypes), checked on
the CPU with fakes of their exact signatures that compute with fla's own naive ops; the dispatch rules (CUDA only,
the package's absence, ``auto`` after the self-check). fla 0.6's kernels themselves do not run under
``TRITON_INTERPRET=1``: ``benchmarks/gpu_check.py`` compares them on the first machine with a GPU."""

from __future__ import annotations

import inspect
import warnings
from types import SimpleNamespace

import pytest
import torch

from longssm.config import ModelConfig
from longssm.errors import UserError
from longssm.models import build_model
from longssm.ops import dispatch, fla_kernels
from longssm.ops.delta_rule import delta_rule_ref
from longssm.ops.gla import gla_ref
from test_families import scramble

FAMILIES = ("deltanet", "gated_deltanet", "gla")
CALLS: list[tuple[str, dict]] = []


def _check_layout(q, k, v, initial_state, scale, output_final_state, **flags):
    b, l, h, dk = q.shape
    assert k.shape == q.shape and v.shape[:3] == (b, l, h)
    for t in (q, k, v):
        assert t.is_contiguous() and t.dtype in (torch.float32, torch.bfloat16) and t.dtype == v.dtype
    assert initial_state is None or (initial_state.shape == (b, h, dk, v.shape[-1])
                                     and initial_state.dtype == torch.float32 and initial_state.is_contiguous())
    assert isinstance(scale, float) and output_final_state is True
    assert not any(flags.values()), flags  # in-kernel l2norm / sigmoid / gate options off: the mixer did them


def fake_chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
                          use_qk_l2norm_in_kernel=False, cu_seqlens=None, cu_seqlens_cpu=None, **kwargs):
    _check_layout(q, k, v, initial_state, scale, output_final_state, l2=use_qk_l2norm_in_kernel, cu=cu_seqlens)
    assert beta.shape == q.shape[:3] and not kwargs
    CALLS.append(("chunk_delta_rule", {"scale": scale}))
    return delta_rule_ref(q, k, v, beta, None, scale, initial_state)


def fake_chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False,
                                allow_neg_eigval=False, state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None,
                                chunk_indices=None, cp_context=None, **kwargs):
    _check_layout(q, k, v, initial_state, scale, output_final_state, l2=use_qk_l2norm_in_kernel,
                  sigmoid=use_beta_sigmoid_in_kernel, neg=allow_neg_eigval, v_first=state_v_first, cu=cu_seqlens)
    assert g.shape == beta.shape == q.shape[:3] and g.dtype == torch.float32 and (g <= 0).all() and not kwargs
    CALLS.append(("chunk_gated_delta_rule", {"scale": scale}))
    return delta_rule_ref(q, k, v, beta, g, scale, initial_state)


def fake_chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, state_v_first=False,
                   cu_seqlens=None, cu_seqlens_cpu=None):
    _check_layout(q, k, v, initial_state, scale, output_final_state, v_first=state_v_first, cu=cu_seqlens)
    assert g.shape == q.shape and g.dtype == torch.float32 and (g <= 0).all()
    CALLS.append(("chunk_gla", {"scale": scale}))
    return gla_ref(q, k, v, g, scale, initial_state)


FAKES = SimpleNamespace(chunk_delta_rule=fake_chunk_delta_rule, chunk_gated_delta_rule=fake_chunk_gated_delta_rule,
                        chunk_gla=fake_chunk_gla)


@pytest.fixture
def fake_fla(monkeypatch):
    monkeypatch.setattr(fla_kernels, "load", lambda: FAKES)
    CALLS.clear()
    yield CALLS


def test_the_fakes_have_fla_s_exact_signatures(fla_ops):
    from fla.ops.delta_rule import chunk_delta_rule
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    from fla.ops.gla import chunk_gla

    assert fla_ops.__version__ == fla_kernels.FLA_VERSION
    for real, fake in ((chunk_delta_rule, fake_chunk_delta_rule), (chunk_gated_delta_rule, fake_chunk_gated_delta_rule),
                       (chunk_gla, fake_chunk_gla)):
        real_params = list(inspect.signature(inspect.unwrap(real)).parameters)
        assert list(inspect.signature(fake).parameters) == real_params, real.__name__


@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_on_fla_kernels_equals_the_chunked_model(fake_fla, family):
    """Logits, carried states and every parameter gradient with scan_impl fla (the fakes) equal those of chunked."""
    torch.manual_seed(0)
    model = scramble(build_model(ModelConfig(family=family, vocab_size=37, d_model=16, n_layers=2, head_dim=8,
                                             chunk_size=8)))
    tokens = torch.randint(0, 37, (2, 19))
    start = {k: torch.randn_like(v) * 0.3 for k, v in model.initial_state(2).items()}
    results = []
    for impl in ("chunked", "fla"):
        for layer in model.backbone.layers:
            layer.mixer.scan_impl = impl
        model.zero_grad()
        logits, state = model(tokens, start)
        logits.square().mean().backward()
        results.append((logits.detach(), state, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l1, s1, g1), (l2, s2, g2) = results
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    for key in s1:
        torch.testing.assert_close(s2[key], s1[key], rtol=1e-5, atol=1e-6)
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    expected = {"deltanet": "chunk_delta_rule", "gated_deltanet": "chunk_gated_delta_rule", "gla": "chunk_gla"}
    assert {name for name, _ in fake_fla} == {expected[family]}
    assert all(call["scale"] == pytest.approx(8 ** -0.5) for _, call in fake_fla)


def test_float64_and_empty_inputs(fake_fla):
    q = torch.randn(1, 3, 2, 4, dtype=torch.float64)
    with pytest.raises(UserError, match=r"model\.scan fla computes in float32"):
        fla_kernels.fla_gla(q, q, q, -q.abs())
    state = torch.randn(1, 2, 4, 4)
    o, s = fla_kernels.fla_delta_rule(q[:, :0].float(), q[:, :0].float(), q[:, :0].float(), q[:, :0, :, 0].float(),
                                      initial_state=state)
    assert o.shape == (1, 0, 2, 4) and torch.equal(s, state) and not fake_fla


def test_self_check_passes_with_the_right_call_and_names_what_is_off(fake_fla, monkeypatch):
    assert fla_kernels.self_check(torch.device("cpu")) is None
    wrong = SimpleNamespace(**vars(FAKES))
    wrong.chunk_gla = lambda *a, **kw: fake_chunk_gla(*a, **dict(kw, initial_state=None))  # drops the state
    monkeypatch.setattr(fla_kernels, "load", lambda: wrong)
    reason = fla_kernels.self_check(torch.device("cpu"))
    assert reason is not None and reason.startswith("gla: ") and "off by" in reason


def test_scan_fla_needs_cuda_and_the_package(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with pytest.raises(UserError, match=r"model\.scan fla runs on CUDA devices .* use model\.scan chunked"):
        dispatch.resolve_scan("fla", cpu, ("fla",))
    monkeypatch.setattr(fla_kernels, "fla_unavailable", lambda: "ModuleNotFoundError: No module named 'fla'")
    with pytest.raises(UserError, match=r"needs the fla-core package \(pip install longssm\[fla\]\): ModuleNotFound"):
        dispatch.resolve_scan("fla", cuda, ("fla",))
    assert dispatch.resolve_scan("fla", cpu, ("triton",)) == "chunked"  # a family without fla kernels: chunked
    assert dispatch.resolve_scan("auto", cuda, ("fla",)) == "chunked"    # auto never fails: no package, chunked


def test_auto_picks_fla_on_cuda_after_the_self_check(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(fla_kernels, "fla_unavailable", lambda: None)
    for reason, expected in ((None, "fla"), ("gla: output off by 1.0e+00 (relative)", "chunked")):
        dispatch._fla_passes_self_check.cache_clear()
        monkeypatch.setattr(fla_kernels, "self_check", lambda device, r=reason: r)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert dispatch.resolve_scan("auto", cuda, ("fla",)) == expected
            assert dispatch.resolve_scan("auto", cuda, ("fla",), torch.float64) == "chunked"
        assert (reason is not None) == any("failed their self-check" in str(w.message) for w in caught)
    dispatch._fla_passes_self_check.cache_clear()


def test_the_gpu_check_script_s_fla_section_runs_its_comparisons(fake_fla):
    """benchmarks/gpu_check.py's comparisons, run on the CPU with the fakes: every error is small, and a kernel
    that drops the initial state is caught."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_check

    result = gpu_check.check(torch.device("cpu"), (2, 21, 2, 8, 4))
    assert set(result) == {"chunk_delta_rule", "chunk_gated_delta_rule", "chunk_gla"}
    assert all(r["ok"] for r in result.values()), result
    assert set(result["chunk_gla"]["float32"]) == {"output", "final_state", "grad_q", "grad_k", "grad_v",
                                                   "grad_initial_state", "grad_g"}
    assert gpu_check.main(["--quick", "--device", "cpu"])["skipped"].startswith("no CUDA device")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="runs fla's compiled kernels: needs a CUDA GPU")
def test_fla_kernels_on_cuda_equal_our_chunked_ops(fla_ops):
    """The real kernels (benchmarks/gpu_check.py's comparison): values, final states and every gradient, float32
    and bf16, against our chunked ops in float64 on the GPU."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_check

    result = gpu_check.check(torch.device("cuda"), (2, 37, 2, 16, 8))
    assert all(r["ok"] for r in result.values()), result
    assert fla_kernels.self_check(torch.device("cuda")) is None
