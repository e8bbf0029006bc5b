"""The delta rule (DeltaNet, Gated DeltaNet) and GLA ops: the chunked forms against their sequential references
(float64: outputs, final states, every gradient, the initial state's included), against fla's naive ops and against
the torch gated delta rule of transformers' Qwen3-Next, for lengths that are not multiples of the chunk and for
decays strong enough to overflow any factorisation with positive exponents."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from longssm.ops.delta_rule import delta_rule_chunked, delta_rule_ref
from longssm.ops.gla import gla_chunked, gla_ref

B, H, K, V = 2, 3, 8, 5


def inputs(l: int, *, gate: str | None, decay_scale: float = 1.0, seed: int = 0, dtype=torch.float64) -> dict:
    """Random inputs of one op: unit q, k; β in (0, 1); g = log-decays <= 0 (per head, or per key channel for
    "gla"); an initial state. ``decay_scale`` multiplies g (large = decays of e^-100 per token and more)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    out = {"q": F.normalize(rand(B, l, H, K), dim=-1), "k": F.normalize(rand(B, l, H, K), dim=-1),
           "v": rand(B, l, H, V), "initial_state": rand(B, H, K, V)}
    if gate == "gla":
        out["g"] = F.logsigmoid(rand(B, l, H, K)) * decay_scale
    else:
        out["beta"] = torch.rand(B, l, H, generator=gen, dtype=dtype)
        if gate == "gated":
            out["g"] = -torch.rand(B, l, H, generator=gen, dtype=dtype) * 2 * decay_scale
    return out


def run(op, leaves: dict, **kw):
    """Outputs, final state and the gradients of a fixed random linear function of both w.r.t. every input."""
    leaves = {k: v.clone().requires_grad_() for k, v in leaves.items()}
    o, s = op(**leaves, scale=0.7, **kw)
    gen = torch.Generator().manual_seed(99)
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) for t in (o, s)]
    loss = (o * weights[0]).sum() + (s * weights[1]).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return o.detach(), s.detach(), dict(zip(leaves, grads))


OPS = {"deltanet": (delta_rule_ref, delta_rule_chunked, None), "gated_deltanet": (delta_rule_ref, delta_rule_chunked,
                                                                                  "gated"),
       "gla": (gla_ref, gla_chunked, "gla")}


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("l, chunk", [(1, 64), (37, 8), (64, 16), (45, 64), (70, 32)])
def test_chunked_equals_reference_on_outputs_states_and_every_gradient(name, l, chunk):
    ref, chunked, gate = OPS[name]
    leaves = inputs(l, gate=gate)
    o1, s1, g1 = run(ref, leaves)
    o2, s2, g2 = run(chunked, leaves, chunk_size=chunk)
    torch.testing.assert_close(o2, o1, rtol=0, atol=1e-12)
    torch.testing.assert_close(s2, s1, rtol=0, atol=1e-12)
    assert set(g1) == set(g2) and "initial_state" in g1
    for key in g1:
        torch.testing.assert_close(g2[key], g1[key], rtol=0, atol=1e-11, msg=lambda m, key=key: f"grad {key}: {m}")


@pytest.mark.parametrize("name", ["gated_deltanet", "gla"])
def test_large_decays_do_not_overflow(name):
    """Decays of e^-200 and below per token: every exponent of the chunked forms is <= 0, so float32 stays finite
    and equals the float64 reference (a factorisation e^{γ_i} e^{-γ_j} would be inf * 0 = NaN here)."""
    ref, chunked, gate = OPS[name]
    leaves = inputs(53, gate=gate, decay_scale=300.0)
    o1, s1, g1 = run(ref, leaves)
    o2, s2, g2 = run(chunked, {k: v.float() for k, v in leaves.items()}, chunk_size=32)
    assert torch.isfinite(o2).all() and torch.isfinite(s2).all()
    assert all(torch.isfinite(g).all() for g in g2.values())
    torch.testing.assert_close(o2.double(), o1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s2.double(), s1, rtol=1e-4, atol=1e-5)
    for key in g1:
        torch.testing.assert_close(g2[key].double(), g1[key], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", list(OPS))
def test_chunked_with_carried_state_equals_the_whole_sequence(name):
    _, chunked, gate = OPS[name]
    leaves = inputs(41, gate=gate)
    with torch.no_grad():
        whole, final = chunked(**leaves, scale=0.7, chunk_size=16)
        state, pieces, t = leaves["initial_state"], [], 0
        for cut in (1, 15, 17, 8):
            part = {k: v[:, t:t + cut] for k, v in leaves.items() if k != "initial_state"}
            o, state = chunked(**part, scale=0.7, initial_state=state, chunk_size=16)
            pieces.append(o)
            t += cut
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(state, final, rtol=0, atol=1e-12)


def test_forward_only_blocks_equal_the_graph_path():
    """Without gradients the chunks go EVAL_BLOCK_CHUNKS at a time (constant memory); the result is the same."""
    for _, chunked, gate in OPS.values():
        leaves = inputs(16 * 40 + 3, gate=gate)
        with torch.no_grad():
            o1, s1 = chunked(**leaves, scale=0.7, chunk_size=16)
        o2, s2, _ = run(chunked, leaves, chunk_size=16)
        torch.testing.assert_close(o1, o2, rtol=0, atol=1e-12)
        torch.testing.assert_close(s1, s2, rtol=0, atol=1e-12)


def test_zero_length_passes_the_state_through():
    for ref, chunked, gate in OPS.values():
        leaves = inputs(0, gate=gate)
        for op in (ref, chunked):
            o, s = op(**leaves, scale=0.7)
            assert o.shape == (B, 0, H, V) and torch.equal(s, leaves["initial_state"])


def test_shapes_are_checked():
    leaves = inputs(5, gate="gated")
    with pytest.raises(ValueError, match="delta rule: expected"):
        delta_rule_chunked(**dict(leaves, beta=leaves["beta"][..., :1]))
    with pytest.raises(ValueError, match="gla: expected"):
        gla_chunked(**dict(inputs(5, gate="gla"), g=leaves["g"]))


# --- second implementations: fla's naive ops and transformers' Qwen3-Next gated delta rule -------------------


def test_delta_rules_equal_fla_naive_ops(fla_ops):
    from fla.ops.delta_rule.naive import delta_rule_recurrence
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    for gate in (None, "gated"):
        x = inputs(29, gate=gate, dtype=torch.float32)
        ours, state = delta_rule_chunked(**x, scale=K ** -0.5, chunk_size=8)
        if gate is None:   # fla's DeltaNet reference is head-first: (b, h, l, ·)
            head_first = {k: v.transpose(1, 2) for k, v in x.items() if k != "initial_state"}
            theirs, their_state = delta_rule_recurrence(**head_first, initial_state=x["initial_state"].clone(),
                                                        output_final_state=True)
            theirs = theirs.transpose(1, 2)
        else:
            theirs, their_state = naive_recurrent_gated_delta_rule(
                x["q"], x["k"], x["v"], x["beta"], x["g"], scale=K ** -0.5, initial_state=x["initial_state"],
                output_final_state=True)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(state, their_state, rtol=1e-5, atol=1e-5)


def test_gla_equals_fla_naive_op(fla_ops):
    from fla.ops.gla.naive import naive_recurrent_gla

    x = inputs(29, gate="gla", dtype=torch.float32)
    ours, state = gla_chunked(**x, scale=K ** -0.5, chunk_size=16)
    theirs, their_state = naive_recurrent_gla(x["q"], x["k"], x["v"], x["g"], initial_state=x["initial_state"],
                                              output_final_state=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, their_state, rtol=1e-5, atol=1e-5)


def test_gated_delta_rule_equals_transformers_qwen3_next(fla_ops):
    """transformers' torch implementations (its fallback when fla's kernels cannot run, as on this CPU), with
    their own L2 normalisation of q and k and their K^-1/2 scale."""
    qwen3_next = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(B, 45, H, K, generator=gen), torch.randn(B, 45, H, K, generator=gen)
    x = inputs(45, gate="gated", dtype=torch.float32)
    ours, state = delta_rule_chunked(F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6), x["v"],
                                     x["beta"], x["g"], scale=K ** -0.5, initial_state=x["initial_state"],
                                     chunk_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, extra in (("torch_chunk_gated_delta_rule", {"chunk_size": 16}),
                            ("torch_recurrent_gated_delta_rule", {})):
            theirs, their_state = getattr(qwen3_next, name)(
                q, k, x["v"], x["g"], x["beta"], initial_state=x["initial_state"].clone(), output_final_state=True,
                use_qk_l2norm_in_kernel=True, **extra)
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
            torch.testing.assert_close(state, their_state, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
