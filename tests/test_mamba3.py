"""Mamba-3's op (``ops/mamba3.py``): the chunked form against the sequential reference in float64 (outputs, all four
final states, every gradient, the initial state's included) for odd lengths and decays of e^-100 per token; the
split invariant; its reduction to Mamba-2's SSD when the trapezoid is Euler's rule and nothing rotates; the
rotations being relative (a common initial angle changes nothing from an empty memory)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longssm.ops.mamba3 import Mamba3State, mamba3_chunked, mamba3_ref, rotate
from longssm.ops.ssd import ssd_ref

F64 = torch.float64
B_, H, P, N, S = 2, 3, 4, 8, 2
NAMES = ("x", "dt", "a", "trap", "B", "C", "angle", "D")


def inputs(l: int, *, decay_scale: float = 1.0, seed: int = 0, p: int = P, n: int = N,
           s: int = S) -> tuple[dict, Mamba3State]:
    """Random inputs: Δ = softplus(N(0, 1)), a = -Δ U(0, decay_scale), trap logits, B, C, raw angles and D N(0, 1);
    a random non-zero initial state (angles in [0, 2π)). Head size ``p``, state size ``n``, ``s`` angles."""
    P, N, S = p, n, s
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    dt = F.softplus(rand(B_, l, H))
    ins = {"x": rand(B_, l, H, P), "dt": dt, "a": -dt * torch.rand(B_, l, H, generator=gen, dtype=F64) * decay_scale,
           "trap": rand(B_, l, H), "B": rand(B_, l, H, N), "C": rand(B_, l, H, N), "angle": rand(B_, l, H, S),
           "D": rand(H)}
    state = Mamba3State(torch.rand(B_, H, S, generator=gen, dtype=F64) * 2 * math.pi, rand(B_, H, P, N),
                        rand(B_, H, N), rand(B_, H, P))
    return ins, state


def run(op, ins: dict, state: Mamba3State, **kw):
    """y, the final state and the gradients of a fixed random linear function of y and the final state w.r.t. every
    input and every tensor of the initial state."""
    leaves = {k: v.clone().requires_grad_() for k, v in ins.items()}
    start = Mamba3State(*(t.clone().requires_grad_() for t in state))
    y, final = op(**leaves, initial_state=start, **kw)
    gen = torch.Generator().manual_seed(99)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=F64)).sum() for t in (y, *final))
    grads = torch.autograd.grad(loss, [*leaves.values(), *start])
    return y.detach(), Mamba3State(*(t.detach() for t in final)), grads


@pytest.mark.parametrize("l, chunk, decay_scale", [(1, 64, 1.0), (5, 4, 1.0), (13, 4, 1.0), (37, 8, 1.0),
                                                     (40, 7, 100.0), (70, 32, 100.0)])
def test_chunked_equals_reference_on_outputs_states_and_every_gradient(l, chunk, decay_scale):
    ins, state = inputs(l, decay_scale=decay_scale)
    y1, s1, g1 = run(mamba3_ref, ins, state)
    y2, s2, g2 = run(mamba3_chunked, ins, state, chunk_size=chunk)
    assert torch.isfinite(y2).all()
    torch.testing.assert_close(y2, y1, rtol=0, atol=1e-11)
    for name, a, b in zip(Mamba3State._fields, s2, s1):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11, msg=name)
    for name, a, b in zip([*NAMES, *(f"initial {f}" for f in Mamba3State._fields)], g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("op", [mamba3_ref, mamba3_chunked])
def test_pieces_with_the_carried_state_equal_the_whole_sequence(op):
    ins, state = inputs(23)
    y, final = op(**ins, initial_state=state)
    cut = {k: (v[:, :9], v[:, 9:]) if v.dim() > 1 else (v, v) for k, v in ins.items()}
    y1, mid = op(**{k: v[0] for k, v in cut.items()}, initial_state=state)
    y2, end = op(**{k: v[1] for k, v in cut.items()}, initial_state=mid)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, rtol=0, atol=1e-12)
    for a, b in zip(end, final):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_euler_rule_without_rotation_is_mamba2_ssd():
    """λ = 1 (trap logits 1e3) and no rotation (raw angles 0): h_t = e^{a_t} h_{t-1} + Δ_t x_t B_t^T, Mamba-2's
    SSD with A = a / Δ, whose reference is an independent loop (``ssd_ref``)."""
    ins, _ = inputs(17)
    ins["trap"] = torch.full_like(ins["trap"], 1e3)
    ins["angle"] = torch.zeros_like(ins["angle"])
    A = -torch.rand(H, dtype=F64) - 0.1
    ins["a"] = ins["dt"] * A
    h0 = torch.randn(B_, H, P, N, dtype=F64)
    start = Mamba3State(torch.zeros(B_, H, S, dtype=F64), h0, torch.zeros(B_, H, N, dtype=F64),
                        torch.zeros(B_, H, P, dtype=F64))
    for op in (mamba3_ref, mamba3_chunked):
        y, final = op(**ins, initial_state=start)
        y_ssd, h_ssd = ssd_ref(ins["x"], ins["dt"], A, ins["B"], ins["C"], D=ins["D"], initial_state=h0)
        torch.testing.assert_close(y, y_ssd, rtol=0, atol=1e-12)
        torch.testing.assert_close(final.ssm, h_ssd, rtol=0, atol=1e-12)


def test_rotations_are_relative_and_the_trapezoid_matters():
    """From an empty memory y depends on angle differences only: a common initial angle changes nothing (while
    it does rotate the state it returns). And the trapezoid is not Euler: λ < 1 changes y."""
    ins, _ = inputs(19)
    zero = Mamba3State(torch.zeros(B_, H, S, dtype=F64), torch.zeros(B_, H, P, N, dtype=F64),
                       torch.zeros(B_, H, N, dtype=F64), torch.zeros(B_, H, P, dtype=F64))
    turned = zero._replace(angle=torch.full((B_, H, S), 1.3, dtype=F64))
    y0, s0 = mamba3_chunked(**ins, initial_state=zero, chunk_size=8)
    y1, s1 = mamba3_chunked(**ins, initial_state=turned, chunk_size=8)
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-12)
    assert (s1.k - s0.k).abs().max() > 1e-3  # the returned B̃ is rotated at the absolute angle
    euler = dict(ins, trap=torch.full_like(ins["trap"], 1e3))
    assert (mamba3_chunked(**euler, initial_state=zero)[0] - y0).abs().max() > 1e-2


def test_rotate_turns_pairs_and_leaves_the_rest():
    u = torch.randn(3, 8, dtype=F64)
    theta = torch.randn(3, 2, dtype=F64)
    r = rotate(u, theta)
    torch.testing.assert_close(r[:, 4:], u[:, 4:])                         # dimensions >= 2S unrotated
    z, zr = torch.complex(u[:, 0:4:2], u[:, 1:4:2]), torch.complex(r[:, 0:4:2], r[:, 1:4:2])
    torch.testing.assert_close(zr, z * torch.exp(1j * theta))              # pair i as a complex number times e^{iθ_i}


def test_empty_sequence_passes_the_state_through():
    ins, state = inputs(0)
    for op in (mamba3_ref, mamba3_chunked):
        y, final = op(**ins, initial_state=state)
        assert y.shape == (B_, 0, H, P) and all(torch.equal(a, b) for a, b in zip(final, state))
