"""Mamba-2's SSD by the fused Triton kernel of the optional ``mamba_ssm`` package: ``model.scan mamba_ssm``.

References
    [1] T. Dao, A. Gu. "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured
        State Space Duality." ICML 2024. arXiv:2405.21060. Section 6 (the SSD algorithm).
    [2] state-spaces/mamba v2, ``mamba_ssm/ops/triton/ssd_combined.py``:
            mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                                      initial_states=None, seq_idx=None, cu_seqlens=None, dt_softplus=False,
                                      dt_limit=(0.0, inf), return_final_states=False, return_varlen_states=False)
        x (b, l, h, p), dt (b, l, h), A (h,), B, C (b, l, g, n), D (h,) or (h, p), z (b, l, h, p),
        initial_states (b, h, p, n) -> out (b, l, h, p) and, with return_final_states, final_states (b, h, p, n).

Glossary: as ``ssd.py`` (b batch, l length, h heads, p head dim, g groups, n state size; Δ = dt, A (h,) < 0, B, C,
D).

The layouts are the same on both sides (``ssd.py`` follows [2]), so the mapping is the identity except:
    Δ      arrives through softplus(+ bias) (the mixer applies it, times s_Δ): dt_bias=None, dt_softplus=False;
           [2]'s default dt_limit (0, inf) clamps Δ at 0 from below, which it already is.
    z      None: the gate belongs to the mixer's gated RMSNorm (as in [2]'s ``Mamba2`` with its RMSNorm).
    A      float32, as [2]'s ``Mamba2`` passes it (-exp(A_log.float())).
    l = 0  no kernel launch (an empty grid crashes Triton's interpreter): y is empty, the state passes through.
    dtype  y in x's dtype, the final state in at least float32 (``ssd.py``'s contract). float64 is refused: the
           kernels accumulate in float32, so a float64 model would silently lose its precision.
A tail shorter than ``chunk_size``, and a chunk length that is no power of two, [2] handles itself (masked loads).

``mamba_ssm`` is imported when first needed, never with longssm; whether it imports (and so whether ``model.scan``
may pick it) is ``dispatch.mamba_ssm_unavailable``. [2]'s kernels take CUDA tensors; under
``TRITON_INTERPRET=1`` they run on CPU tensors only once its CUDA calls are stubbed (``tests/test_mamba_ssm_scan.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import UserError
from .ssd import _check_shapes, _compute_dtype, _start_state


@functools.cache
def load() -> Callable[..., tuple[Tensor, Tensor]]:
    """[2]'s ``mamba_chunk_scan_combined``; raises what importing it raises (ImportError when not installed)."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined


def ssd_mamba_ssm(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    initial_state: Tensor | None = None, chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """``ssd_chunked`` computed by [2]'s fused kernel: the same recurrence ([1] Eq. 2 with A_t = exp(Δ_t A) I),

        h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_t^T,   y_t = h_t C_t + D x_t,

    signature and shapes: x (b, l, h, p), dt (b, l, h) (Δ, after softplus), A (h,), B, C (b, l, g, n), D (h,),
    initial_state (b, h, p, n) or None (zeros) -> y (b, l, h, p) in x's dtype, final_state (b, h, p, n) in at
    least float32. Differentiable w.r.t. every input and ``initial_state`` ([2]'s backward kernels).
    """
    b, l, h, p, _, n = _check_shapes(x, dt, A, B, C)
    if x.dtype == torch.float64:
        raise UserError("model.scan mamba_ssm computes in float32 and this model is float64: use model.scan chunked")
    dtype = _compute_dtype(x)
    if l == 0:
        return x.new_zeros(b, 0, h, p), _start_state(initial_state, x, n, dtype)
    y, final_state = load()(
        x.contiguous(), dt.contiguous(), A.float(), B.contiguous(), C.contiguous(), chunk_size, D=D,
        initial_states=None if initial_state is None else initial_state.contiguous(), dt_softplus=False,
        return_final_states=True,
    )
    return y.to(x.dtype), final_state.to(dtype)
