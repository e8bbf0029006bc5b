"""The delta rule and GLA by the Triton kernels of the optional ``fla-core`` package: ``model.scan fla``.

References
    [1] fla-org/flash-linear-attention 0.6 (``fla-core`` on PyPI), ``fla/ops``:
            chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
                             use_qk_l2norm_in_kernel=False, cu_seqlens=None, ...)
            chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                   use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False,
                                   allow_neg_eigval=False, state_v_first=False, cu_seqlens=None, ...)
            chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, state_v_first=False,
                      cu_seqlens=None, ...)
        q, k (B, T, H, K), v (B, T, H, V), beta and the gated delta rule's g (B, T, H), GLA's g (B, T, H, K), all
        gates in log space; initial_state and the final state (B, H, K, V) with the default state_v_first=False;
        gradients flow to every input and to initial_state, and through the final state.

Glossary and recurrences: ``delta_rule.py`` and ``gla.py`` (b = B batch, l = T length, h = H heads, K, V sizes).

The layouts are ours, so the mapping is the identity: q and k arrive L2-normalised (the mixer's
``l2_normalize``: use_qk_l2norm_in_kernel=False), β after its sigmoid and g as log-decays (the in-kernel gate
options stay off), the scale is passed explicitly (K^-1/2 from the mixers). l = 0 launches nothing. float64 is
refused: the kernels accumulate in float32, so a float64 model would silently lose its precision.

fla is imported when first needed, never with longssm (``import fla.models`` re-registers Hugging Face's "mamba"
auto classes). Its kernels need a CUDA device: they do not run under ``TRITON_INTERPRET=1`` (fla 0.6's autotuner
asks for a GPU driver), so on the CPU the call into them is tested with fakes of their exact signatures
(``tests/test_fla_kernels.py``) and the kernels themselves by ``benchmarks/gpu_check.py`` on a GPU.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from torch import Tensor

from ..errors import UserError, first_line

FLA_VERSION = "0.6.0"
"""The fla-core release the call layout was written against (the ``fla`` extra pins it)."""


@functools.cache
def load() -> SimpleNamespace:
    """fla's ``chunk_delta_rule``, ``chunk_gated_delta_rule`` and ``chunk_gla``; raises what importing them raises."""
    from fla.ops.delta_rule import chunk_delta_rule
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    from fla.ops.gla import chunk_gla

    return SimpleNamespace(chunk_delta_rule=chunk_delta_rule, chunk_gated_delta_rule=chunk_gated_delta_rule,
                           chunk_gla=chunk_gla)


@functools.cache
def fla_unavailable() -> str | None:
    """None when ``load()`` works, else why not (the error's type and first line; checked once)."""
    try:
        load()
    except Exception as err:  # ImportError, or a broken Triton build
        return f"{type(err).__name__}: {first_line(err)}"
    return None


def _refuse_float64(t: Tensor) -> None:
    if t.dtype == torch.float64:
        raise UserError("model.scan fla computes in float32 and this model is float64: use model.scan chunked")


def _nothing_to_run(q: Tensor, v: Tensor, initial_state: Tensor | None) -> tuple[Tensor, Tensor]:
    """l = 0: no kernel launch; an empty output (b, 0, h, V) and the initial state (zeros when None), float32."""
    b, _, h, dk = q.shape
    dv = v.shape[-1]
    start = torch.zeros(b, h, dk, dv, device=v.device) if initial_state is None else initial_state.float()
    return v.new_zeros(b, 0, h, dv), start


def _state(initial_state: Tensor | None) -> Tensor | None:
    """fla's kernels take the initial state in float32 (B, H, K, V), contiguous."""
    return None if initial_state is None else initial_state.float().contiguous()


def fla_delta_rule(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None, scale: float = 1.0,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``delta_rule.delta_rule_chunked`` by fla's kernels: ``chunk_gated_delta_rule`` when ``g`` is given, else
    ``chunk_delta_rule``. Shapes and dtypes as there: q, k (b, l, h, K), v (b, l, h, V), beta, g (b, l, h),
    initial_state (b, h, K, V) or None -> o (b, l, h, V) in v's dtype, final_state (b, h, K, V) float32."""
    _refuse_float64(v)
    if q.shape[1] == 0:
        return _nothing_to_run(q, v, initial_state)
    kernels = load()
    common = dict(scale=scale, initial_state=_state(initial_state), output_final_state=True)
    qkv = (q.to(v.dtype).contiguous(), k.to(v.dtype).contiguous(), v.contiguous())
    if g is None:
        o, final = kernels.chunk_delta_rule(*qkv, beta.to(v.dtype).contiguous(), **common)
    else:
        o, final = kernels.chunk_gated_delta_rule(*qkv, g.float().contiguous(), beta.to(v.dtype).contiguous(),
                                                  **common)
    return o.to(v.dtype), final.float()


def fla_gla(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float = 1.0, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``gla.gla_chunked`` by fla's ``chunk_gla``: q, k, g (b, l, h, K), v (b, l, h, V), initial_state
    (b, h, K, V) or None -> o (b, l, h, V) in v's dtype, final_state (b, h, K, V) float32."""
    _refuse_float64(v)
    if q.shape[1] == 0:
        return _nothing_to_run(q, v, initial_state)
    o, final = load().chunk_gla(
        q.to(v.dtype).contiguous(), k.to(v.dtype).contiguous(), v.contiguous(), g.float().contiguous(), scale=scale,
        initial_state=_state(initial_state), output_final_state=True,
    )
    return o.to(v.dtype), final.float()


SELF_CHECK_TOL = 2e-3
"""Largest relative error (norm) of fla's kernels in ``self_check`` (they compute q k^T in tf32/bf16-friendly
float32 blocks; ~1e-4 is typical)."""


def self_check(device: torch.device) -> str | None:
    """Run the three fla kernels once on ``device`` against our chunked ops (float64 on the same device): None if
    outputs, final states and the gradients of a random linear function of both agree to ``SELF_CHECK_TOL``,
    else why not. b = 2, l = 37 (a partial chunk), h = 2, K = 16, V = 8, with an initial state. Private generator:
    the caller's random stream is untouched."""
    from .delta_rule import delta_rule_chunked
    from .gla import gla_chunked

    b, l, h, dk, dv = 2, 37, 2, 16, 8
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    unit = lambda t: t / t.norm(dim=-1, keepdim=True)  # noqa: E731
    base = dict(q=unit(rand(b, l, h, dk)), k=unit(rand(b, l, h, dk)), v=rand(b, l, h, dv),
                initial_state=rand(b, h, dk, dv))
    problems = {
        "delta_rule": (fla_delta_rule, delta_rule_chunked, dict(base, beta=torch.rand(b, l, h, generator=gen,
                                                                                        dtype=torch.float64))),
        "gated_delta_rule": (fla_delta_rule, delta_rule_chunked, dict(base, beta=torch.rand(
            b, l, h, generator=gen, dtype=torch.float64), g=-torch.rand(b, l, h, generator=gen, dtype=torch.float64))),
        "gla": (fla_gla, gla_chunked, dict(base, g=torch.nn.functional.logsigmoid(rand(b, l, h, dk)) / 4)),
    }
    try:
        for name, (fast, ours, inputs) in problems.items():
            results = []
            with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
                for op, dtype in ((ours, torch.float64), (fast, torch.float32)):
                    leaves = {key: t.to(device, dtype).requires_grad_() for key, t in inputs.items()}
                    o, s = op(**leaves, scale=dk ** -0.5)
                    wo, ws = (torch.randn(t.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
                              for t in (o, s))
                    loss = (o.double() * wo.to(device)).sum() + (s.double() * ws.to(device)).sum()
                    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
                    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves.values())]
                    results.append([t.detach().double().cpu() for t in (o, s, *grads)])
            labels = ["output", "final state", *(f"grad {key}" for key in inputs)]
            for label, ref, got in zip(labels, *results):
                err = ((got - ref).norm() / ref.norm().clamp_min(1e-6)).item()
                if not err < SELF_CHECK_TOL:  # NaN fails too
                    return f"{name}: {label} off by {err:.1e} (relative)"
    except Exception as err:
        return f"{type(err).__name__}: {first_line(err)}"
    return None
