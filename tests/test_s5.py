"""S5: the chunked parallel scan against the sequential loop, the layer against independent references
(Van Loan ZOH, the full P-state complex system, the real HiPPO-N matrix), and the TBPTT invariants."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from longssm.config import ModelConfig
from longssm.models import build_model
from longssm.models.s5 import S5SSM, hippo_n, init_lambda_v
from longssm.ops.s5_scan import diag_scan_fast, diag_scan_ref

C128 = torch.complex128


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().norm() / (b.abs().norm() + 1e-12))


def random_decay(*shape: int, dtype=torch.float64) -> torch.Tensor:
    """Complex Λ̄ with 0.5 <= |Λ̄| < 1 and arbitrary phase."""
    return torch.polar(0.5 + 0.5 * torch.rand(*shape, dtype=dtype), 6.0 * torch.rand(*shape, dtype=dtype))


def loop_scan(lambda_bar, bu, x0):
    """The recurrence x_k = Λ̄_k x_{k-1} + (B̄u)_k as a plain Python loop (test-local oracle)."""
    x, xs = x0.clone(), []
    for t in range(bu.shape[1]):
        a = lambda_bar if lambda_bar.dim() == 1 else lambda_bar[:, t]
        x = a * x + bu[:, t]
        xs.append(x)
    return torch.stack(xs, 1), x


@pytest.mark.parametrize("time_varying", [False, True])
@pytest.mark.parametrize("length,chunk", [(1, 4), (7, 4), (16, 64), (67, 4), (129, 8)])
def test_scan_matches_loop_with_gradients(time_varying, length, chunk):
    torch.manual_seed(length)
    b, p = 3, 5
    lam = random_decay(b, length, p) if time_varying else random_decay(p)
    lam.requires_grad_()
    bu = torch.randn(b, length, p, dtype=C128, requires_grad=True)
    x0 = torch.randn(b, p, dtype=C128, requires_grad=True)
    ys_loop, fin_loop = loop_scan(lam, bu, x0)
    for op in (diag_scan_ref, lambda *a: diag_scan_fast(*a, chunk_size=chunk)):
        ys, fin = op(lam, bu, x0)
        assert rel_err(ys, ys_loop) < 1e-12 and rel_err(fin, fin_loop) < 1e-12
        gy, gf = torch.randn_like(ys), torch.randn_like(fin)
        grads = torch.autograd.grad(
            [torch.view_as_real(ys), torch.view_as_real(fin)],
            [lam, bu, x0], [torch.view_as_real(gy), torch.view_as_real(gf)])
        grads_loop = torch.autograd.grad(
            [torch.view_as_real(ys_loop), torch.view_as_real(fin_loop)],
            [lam, bu, x0], [torch.view_as_real(gy), torch.view_as_real(gf)], retain_graph=True)
        for g, g_ref in zip(grads, grads_loop):
            assert rel_err(g, g_ref) < 1e-11


def test_scan_zero_initial_state_and_empty():
    lam, bu = random_decay(4), torch.randn(2, 9, 4, dtype=C128)
    ys, fin = diag_scan_fast(lam, bu, chunk_size=4)
    ys_ref, fin_ref = loop_scan(lam, bu, torch.zeros(2, 4, dtype=C128))
    assert rel_err(ys, ys_ref) < 1e-12 and rel_err(fin, fin_ref) < 1e-12
    x0 = torch.randn(2, 4, dtype=C128)
    for op in (diag_scan_ref, diag_scan_fast):
        ys, fin = op(lam, bu[:, :0], x0)
        assert ys.shape == (2, 0, 4) and torch.equal(fin, x0)


def test_scan_long_float32_stays_accurate():
    """L = 32768 with |Λ̄| near 1 (slow decay): float32 chunked scan vs the complex128 loop, no blow-up."""
    torch.manual_seed(0)
    length, p = 32768, 4
    lam = torch.polar(torch.tensor([0.9999, 0.999, 0.99, 0.5], dtype=torch.float64),
                      torch.tensor([0.001, 0.1, 1.0, 3.0], dtype=torch.float64))
    bu = torch.randn(1, length, p, dtype=C128)
    x0 = 10 * torch.randn(1, p, dtype=C128)
    ys_ref, fin_ref = diag_scan_ref(lam, bu, x0)
    ys, fin = diag_scan_fast(lam.to(torch.complex64), bu.to(torch.complex64), x0.to(torch.complex64))
    assert torch.isfinite(torch.view_as_real(ys)).all()
    assert rel_err(ys.to(C128), ys_ref) < 1e-4 and rel_err(fin.to(C128), fin_ref) < 1e-4


def test_hippo_n_diagonalisation():
    size = 8
    a = hippo_n(size)
    assert torch.allclose(a + a.T, -torch.eye(size, dtype=torch.float64))  # −½ I + skew-symmetric
    lam, v = init_lambda_v(size)
    assert lam.shape == (size // 2,) and v.shape == (size, size // 2)
    assert torch.allclose(a.to(C128) @ v, v * lam, atol=1e-12)  # A V = V Λ
    v_full = torch.cat([v, v.conj()], 1)
    assert torch.allclose(v_full.conj().T @ v_full, torch.eye(size, dtype=C128), atol=1e-12)  # unitary
    eig = torch.linalg.eigvals(a)
    kept = torch.cat([lam, lam.conj()])
    assert torch.allclose(torch.sort(eig.imag).values, torch.sort(kept.imag).values, atol=1e-10)
    assert torch.allclose(kept.real, torch.full_like(kept.real, -0.5))
    lam_b, v_b = init_lambda_v(size, blocks=2)
    assert torch.allclose(torch.block_diag(hippo_n(4), hippo_n(4)).to(C128) @ v_b, v_b * lam_b, atol=1e-12)


def test_ssm_layer_against_full_complex_system_and_van_loan_zoh():
    """2 Re(C̃x) + Du of the halved system == C x + D u of the full P-state system (which is real), with
    B̄ from the Van Loan matrix exponential, simulated by a test-local loop in complex128."""
    torch.manual_seed(0)
    d, P, b, length = 6, 8, 2, 11
    layer = S5SSM(d, P, dt_min=0.01, dt_max=0.5).double()
    with torch.no_grad():
        layer.Lambda_re_log.add_(0.3 * torch.randn_like(layer.Lambda_re_log))
    n = P // 2
    lam = torch.complex(-torch.exp(layer.Lambda_re_log), layer.Lambda_im).detach()
    dt = torch.exp(layer.log_step).detach()
    b_tilde = torch.view_as_complex(layer.B.detach())
    c_tilde = torch.view_as_complex(layer.C.detach())
    # Van Loan: exp([[λΔ, Δ], [0, 0]]) = [[Λ̄, (Λ̄−1)/λ], [0, 1]].
    m = torch.zeros(n, 2, 2, dtype=C128)
    m[:, 0, 0], m[:, 0, 1] = lam * dt, dt
    e = torch.linalg.matrix_exp(m)
    lam_bar, zoh = e[:, 0, 0], e[:, 0, 1]
    lam_full = torch.cat([lam_bar, lam_bar.conj()])
    b_full = torch.cat([zoh[:, None] * b_tilde, (zoh[:, None] * b_tilde).conj()])  # (P, d)
    c_full = torch.cat([c_tilde, c_tilde.conj()], 1)  # (d, P)

    u = torch.randn(b, length, d, dtype=torch.float64)
    x0 = torch.randn(b, n, dtype=C128)
    x = torch.cat([x0, x0.conj()], 1)
    ys = []
    for t in range(length):
        x = lam_full * x + u[:, t].to(C128) @ b_full.T
        ys.append(x @ c_full.T + layer.D.detach() * u[:, t])
    y_full = torch.stack(ys, 1)
    assert y_full.imag.abs().max() < 1e-12

    for impl in ("chunked", "reference"):
        y, fin = layer(u, x0, impl=impl)
        assert y.dtype == torch.float64
        assert rel_err(y.detach(), y_full.real) < 1e-12
        assert rel_err(torch.cat([fin, fin.conj()], 1).detach(), x) < 1e-12


def tiny_config(**kw) -> ModelConfig:
    base = dict(family="s5", vocab_size=32, d_model=8, n_layers=2, d_state=6, chunk_size=4)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("scan", ["chunked", "reference"])
def test_chunked_equals_whole(scan):
    torch.manual_seed(0)
    model = build_model(tiny_config(scan=scan)).double().eval()
    tokens = torch.randint(0, 32, (3, 23))
    start = {k: torch.randn_like(v) for k, v in model.initial_state(3).items()}
    with torch.no_grad():
        logits, state = model(tokens, start)
        for cuts in ([1, 2, 3, 4, 5, 6], [11], [22], list(range(1, 23)), [7, 8, 20]):
            pieces, s = [], start
            for lo, hi in zip([0] + cuts, cuts + [23]):
                out, s = model(tokens[:, lo:hi], s)
                pieces.append(out)
            assert (torch.cat(pieces, 1) - logits).abs().max() < 1e-10
            for k in state:
                assert (s[k] - state[k]).abs().max() < 1e-10


def test_state_shapes_zero_default_and_chunked_equals_reference():
    torch.manual_seed(1)
    cfg = tiny_config()
    model = build_model(cfg)
    tokens = torch.randint(0, 32, (2, 13))
    zeros = model.initial_state(2)
    assert set(zeros) == {"layers.0.ssm", "layers.1.ssm"}
    assert all(v.shape == (2, 3, 2) and v.dtype == torch.float32 and not v.any() for v in zeros.values())
    logits, state = model(tokens)
    logits0, _ = model(tokens, zeros)
    assert torch.equal(logits, logits0)
    assert logits.shape == (2, 13, 32) and all(v.shape == (2, 3, 2) for v in state.values())
    ref = build_model(tiny_config(scan="reference"))
    ref.load_state_dict(model.state_dict())
    logits_ref, state_ref = ref(tokens, state)
    logits_chunked, state_chunked = model(tokens, state)
    assert rel_err(logits_chunked, logits_ref) < 1e-5
    assert all(rel_err(state_chunked[k], state_ref[k]) < 1e-5 for k in state)


def test_windows_continue_concatenation_and_gradients_reach_state():
    torch.manual_seed(2)
    model = build_model(tiny_config()).double()
    w1, w2 = torch.randint(0, 32, (2, 8)), torch.randint(0, 32, (2, 8))
    _, s1 = model(w1)
    s1 = {k: v.detach().requires_grad_() for k, v in s1.items()}
    out2, s2 = model(w2, s1)
    out12, s12 = model(torch.cat([w1, w2], 1))
    assert (out2 - out12[:, 8:]).abs().max() < 1e-10
    assert all((s2[k] - s12[k]).abs().max() < 1e-10 for k in s2)
    out2.sum().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in s1.values())


def test_state_safetensors_round_trip(tmp_path):
    torch.manual_seed(3)
    model = build_model(tiny_config())
    tokens = torch.randint(0, 32, (2, 10))
    _, state = model(tokens)
    save_file({k: v.detach() for k, v in state.items()}, tmp_path / "state.safetensors")
    loaded = load_file(tmp_path / "state.safetensors")
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    with torch.no_grad():
        a, sa = model(tokens, state)
        b, sb = model(tokens, loaded)
    assert torch.equal(a, b) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_odd_state_size_is_a_user_error():
    from longssm.errors import UserError

    with pytest.raises(UserError, match="d_state"):
        build_model(tiny_config(d_state=5))
