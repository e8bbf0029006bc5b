"""Mamba-1 selective scan: the reference against a closed form, the fast scan against the reference."""

from __future__ import annotations

import pytest
import torch

from longssm.ops.selective_scan import selective_scan, selective_scan_fast, selective_scan_ref

INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make_inputs(b=2, l=33, e=5, n=3, dtype=torch.float64, seed=0, delta_scale=1.0, a_scale=1.0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    return dict(
        u=randn(b, l, e),
        delta=randn(b, l, e) * delta_scale,  # goes through softplus(Δ + bias)
        A=-torch.rand(e, n, generator=gen, dtype=dtype) * 2 * a_scale - 0.1,
        B=randn(b, l, n),
        C=randn(b, l, n),
        D=randn(e),
        z=randn(b, l, e),
        delta_bias=randn(e) * 0.5,
        initial_state=randn(b, e, n),
    )


def run(fn, inputs, **kw):
    """Outputs and the gradients of a random linear function of (y, h_final) w.r.t. every input."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    y, h = fn(**leaves, delta_softplus=True, **kw)
    gen = torch.Generator().manual_seed(123)
    wy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)
    wh = torch.randn(h.shape, generator=gen, dtype=torch.float64).to(h.dtype)
    grads = torch.autograd.grad((y * wy).sum() + (h * wh).sum(), [leaves[k] for k in INPUTS])
    return y.detach(), h.detach(), dict(zip(INPUTS, grads))


def assert_rel_close(got, expected, tol, name=""):
    err = (got.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-6)
    assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"


def test_reference_matches_closed_form():
    """h_l = Σ_s exp(A Σ_{r>s} Δ_r) Δ_s u_s B_s + exp(A Σ Δ) h_0, and y_t = C_t h_t + D u_t (no gate)."""
    x = make_inputs(b=2, l=6, e=3, n=2)
    delta = torch.nn.functional.softplus(x["delta"] + x["delta_bias"])
    y, h = selective_scan_ref(x["u"], delta, x["A"], x["B"], x["C"], D=x["D"], initial_state=x["initial_state"])
    def decay(s: int, t: int) -> torch.Tensor:
        """exp(A Σ_{s<r<=t} Δ_r), (b, e, n)."""
        return torch.exp(x["A"] * delta[:, s + 1:t + 1].sum(1)[..., None])

    for t in range(6):
        h_t = decay(-1, t) * x["initial_state"]
        for s in range(t + 1):
            h_t = h_t + decay(s, t) * (delta[:, s] * x["u"][:, s])[..., None] * x["B"][:, s, None, :]
        y_t = torch.einsum("ben,bn->be", h_t, x["C"][:, t]) + x["D"] * x["u"][:, t]
        torch.testing.assert_close(y[:, t], y_t, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(h, h_t, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-5)])
@pytest.mark.parametrize("length", [1, 7, 33, 100])
@pytest.mark.parametrize("chunk_size", [None, 1, 8])
def test_fast_matches_reference(dtype, tol, length, chunk_size):
    x = make_inputs(l=length, dtype=dtype, seed=length)
    y_ref, h_ref, g_ref = run(selective_scan_ref, {k: v.double() for k, v in x.items()})
    y, h, g = run(selective_scan_fast, x, chunk_size=chunk_size)
    assert y.dtype == h.dtype == dtype
    assert_rel_close(y, y_ref, tol, "y")
    assert_rel_close(h, h_ref, tol, "final state")
    for k in INPUTS:
        assert_rel_close(g[k], g_ref[k], tol, f"grad {k}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_decays_do_not_overflow(dtype):
    """Δ·A far below -30 (e^-1000 in places): the fast scan stays finite and equal to the reference."""
    x = make_inputs(l=40, dtype=dtype, delta_scale=20.0, a_scale=30.0, seed=5)
    assert (torch.nn.functional.softplus(x["delta"] + x["delta_bias"])[..., None] * x["A"]).min() < -1000
    y_ref, h_ref, g_ref = run(selective_scan_ref, {k: v.double() for k, v in x.items()})
    y, h, g = run(selective_scan_fast, x, chunk_size=16)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    assert all(torch.isfinite(v).all() for v in g.values())
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    assert_rel_close(y, y_ref, tol, "y")
    assert_rel_close(h, h_ref, tol, "final state")
    for k in INPUTS:
        assert_rel_close(g[k], g_ref[k], tol, f"grad {k}")


def test_no_initial_state_and_no_grad_path():
    x = make_inputs(l=21)
    x.pop("initial_state")
    with torch.no_grad():
        y_ref, h_ref = selective_scan_ref(**x, delta_softplus=True)
        y, h = selective_scan(**x, delta_softplus=True, impl="chunked", chunk_size=4)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(h, h_ref, atol=1e-12, rtol=1e-12)


def test_chunked_calls_compose():
    """Scanning [0, k) then [k, l) from the carried state equals one scan (the TBPTT invariant of the op)."""
    x = make_inputs(l=30)
    y, h = selective_scan_fast(**x, delta_softplus=True)
    first = {k: (v[:, :11] if v.dim() == 3 and k != "initial_state" else v) for k, v in x.items()}
    rest = {k: (v[:, 11:] if v.dim() == 3 and k != "initial_state" else v) for k, v in x.items()}
    y1, h1 = selective_scan_fast(**first, delta_softplus=True)
    rest["initial_state"] = h1
    y2, h2 = selective_scan_fast(**rest, delta_softplus=True)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(h2, h, atol=1e-12, rtol=1e-12)


def test_dispatcher_rejects_unknown_impl():
    x = make_inputs(l=2)
    with pytest.raises(ValueError):
        selective_scan(**x, impl="cuda")
