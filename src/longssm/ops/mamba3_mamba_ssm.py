"""Mamba-3's SISO recurrence by the fused Triton kernel of the optional ``mamba_ssm`` package: ``model.scan
mamba_ssm`` for the mamba3 family.

References
    [1] state-spaces/mamba 2.3.2, ``mamba_ssm/ops/triton/mamba3/mamba3_siso_combined.py``:
            mamba3_siso_combined(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D=None, Z=None,
                                 Input_States=None, chunk_size=64, return_final_states=False, cu_seqlens=None)
        Q, K (b, l, h_qk, n), V (b, l, h, p), ADT, DT, Trap (b, h, l), Q_bias, K_bias (h, n), Angles (b, l, h, S),
        D (h,), Input_States (angle (b, h, S), ssm (b, h, p, n), k (b, h, n), v (b, h, p))
        -> out (b, l, h, p) and, with return_final_states, the four final states in the same shapes.

The mapping onto ``mamba3.mamba3_ref``'s arguments (glossary there):
    Q = C, K = B      per head (h_qk = h), the biases already added by the mixer: Q_bias = K_bias = 0
    V = x             ADT = a = A Δ, DT = Δ, Trap = trap (its logits: [1] applies the sigmoid), each as (b, h, l)
    Angles = r        the raw angle projection ([1] applies π tanh(r) Δ and accumulates it mod 2π)
    Z = None          the gate belongs to the mixer
    l = 0             no kernel launch: y is empty, the state passes through
    dtype             [1] casts Q, K, V, Trap and the angles to bfloat16 and accumulates in float32: the kernel
                      agrees with ``mamba3_chunked`` to ~1e-2 (relative), not to float32's 1e-6; y comes back in
                      x's dtype, the states in at least float32. float64 is refused.

``mamba_ssm`` is imported when first needed, never with longssm; whether it imports is
``dispatch.mamba_ssm_unavailable("mamba_ssm_mamba3")``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import UserError
from .mamba3 import Mamba3State, check_shapes, compute_dtype, start_state

SELF_CHECK_TOL = 5e-2
"""Largest relative error (norm) of the kernel in ``self_check``: its inputs are rounded to bfloat16 (~4e-3 each)."""


@functools.cache
def load() -> Callable[..., tuple[Tensor, ...]]:
    """[1]'s ``mamba3_siso_combined``; raises what importing it raises (ImportError when not installed)."""
    from mamba_ssm.ops.triton.mamba3.mamba3_siso_combined import mamba3_siso_combined

    return mamba3_siso_combined


def mamba3_mamba_ssm(
    x: Tensor, dt: Tensor, a: Tensor, trap: Tensor, B: Tensor, C: Tensor, angle: Tensor, D: Tensor | None = None,
    initial_state: Mamba3State | None = None, chunk_size: int = 64,
) -> tuple[Tensor, Mamba3State]:
    """``mamba3_chunked`` computed by [1]'s fused kernel: same signature, shapes and recurrence (``ops/mamba3.py``).
    Differentiable w.r.t. every input and every tensor of ``initial_state`` ([1]'s backward kernels)."""
    b, l, h, p, n, S = check_shapes(x, dt, a, trap, B, C, angle)
    if x.dtype == torch.float64:
        raise UserError("model.scan mamba_ssm computes Mamba-3 in bfloat16/float32 and this model is float64: use "
                        "model.scan chunked")
    dtype = compute_dtype(x)
    start = start_state(initial_state, x, n, S, dtype)
    if l == 0:
        return x.new_zeros(b, 0, h, p), start
    zeros = B.new_zeros(h, n, dtype=torch.float32)
    y, *final = load()(
        C.contiguous(), B.contiguous(), x.contiguous(), a.float().transpose(1, 2).contiguous(),
        dt.float().transpose(1, 2).contiguous(), trap.transpose(1, 2).contiguous(), zeros, zeros,
        angle.contiguous(), D=None if D is None else D.float(), Z=None,
        Input_States=tuple(t.float().contiguous() for t in start), chunk_size=chunk_size, return_final_states=True,
    )
    return y.to(x.dtype), Mamba3State(*(t.to(dtype) for t in final))


def self_check(device: torch.device) -> str | None:
    """Run the kernel once on ``device`` against ``mamba3_chunked`` in float64: None if they agree to
    ``SELF_CHECK_TOL`` on y, the final states and the gradients of every input, else why not (an exception is a
    failure too). b = 2, l = 37 (a partial second chunk of 32), h = 2, p = 16, n = 16, S = 4, from a non-zero state.
    """
    from ..errors import first_line
    from .mamba3 import mamba3_chunked

    try:
        gen = torch.Generator().manual_seed(0)
        b, l, h, p, n, S = 2, 37, 2, 16, 16, 4
        shapes = [(b, l, h, p), (b, l, h), (b, l, h), (b, l, h), (b, l, h, n), (b, l, h, n), (b, l, h, S), (h,),
                  (b, h, S), (b, h, p, n), (b, h, n), (b, h, p)]
        inputs = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
        inputs[1] = torch.nn.functional.softplus(inputs[1])                   # Δ > 0
        inputs[2] = -inputs[1] * torch.rand(b, l, h, generator=gen, dtype=torch.float64)   # A Δ <= 0
        results = []
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for op, dtype in ((mamba3_chunked, torch.float64), (mamba3_mamba_ssm, torch.float32)):
                leaves = [t.to(device, dtype).requires_grad_() for t in inputs]
                y, final = op(*leaves[:8], initial_state=Mamba3State(*leaves[8:]), chunk_size=32)
                loss = y.sum() + sum((t * t).sum() for t in final[1:])
                grads = torch.autograd.grad(loss, leaves[:8])
                results.append([t.detach().double().cpu() for t in (y, *final, *grads)])
    except Exception as err:
        return f"{type(err).__name__}: {first_line(err)}"
    names = ["y", "angle", "ssm", "k", "v", "grad x", "grad dt", "grad a", "grad trap", "grad B", "grad C",
             "grad angle", "grad D"]
    for name, ref, got in zip(names, *results):
        diff = torch.remainder(got - ref + math.pi, 2 * math.pi) - math.pi if name == "angle" else got - ref
        err = (diff.norm() / ref.norm().clamp_min(1e-6)).item()  # angles: mod 2π (either may have wrapped)
        if not err < SELF_CHECK_TOL:
            return f"{name} off by {err:.1e} (relative)"
    return None
