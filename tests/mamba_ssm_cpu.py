"""mamba_ssm's Triton kernels on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` must be set before
triton is imported), for the tests that compare them with our ops.

A CPU install has no CUDA extensions, and the kernels' Python wrappers assume a GPU around them. ``interpreted``
applies these stubs, none of which changes the arithmetic of a kernel, and imports the package's modules afresh
(so that their kernels are built for the interpreter), dropping them again afterwards:
  1. the package ``__init__`` is skipped (it imports the CUDA extension ``selective_scan_cuda``): ``mamba_ssm``
     is an empty package over the installed directory, so only ``mamba_ssm.ops.triton.*`` and the modules asked
     for are imported;
  2. ``torch.cuda.device(index)``, entered around every launch, is a no-op context;
  3. ``torch.cuda.get_device_properties`` gives an SM count (backward passes size a grid from it);
  4. every autotuner keeps its first config (timing the others needs a GPU driver);
and, for Mamba-3's kernels (``mamba3_shims=True``), what Triton 3.9's interpreter cannot run:
  5. the PTX approximations of cos, sin and tanh (inline assembly) are the exact functions;
  6. ``tl.dot`` of bfloat16 operands is computed from their exact float32 values (the interpreter stores bfloat16
     as uint16 and would multiply the integers; a GPU multiplies bfloat16 exactly and accumulates in float32).
Elementwise bfloat16 arithmetic is wrong in the interpreter too, which Mamba-3's backward kernels use: their
gradients are compared on a GPU only (``benchmarks/gpu_check.py``, ``mamba3_mamba_ssm.self_check``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator

import pytest
import torch
import triton
import triton.language as tl


def own_modules() -> dict[str, types.ModuleType]:
    return {k: v for k, v in sys.modules.items() if k == "mamba_ssm" or k.startswith("mamba_ssm.")}


@triton.jit
def cos_exact(x):
    return tl.cos(x)


@triton.jit
def sin_exact(x):
    return tl.sin(x)


@triton.jit
def tanh_exact(x):
    return 2 * tl.sigmoid(2 * x) - 1


def _mamba3_shims(mp: pytest.MonkeyPatch) -> None:
    """Stubs 5 and 6 of the module docstring."""
    import numpy as np
    from triton.runtime import interpreter

    utils = importlib.import_module("mamba_ssm.ops.triton.mamba3.utils")
    for name, fn in (("cos_approx", cos_exact), ("sin_approx", sin_exact), ("tanh_approx", tanh_exact)):
        mp.setattr(utils, name, fn)
    dot = interpreter.InterpreterBuilder.create_dot

    def as_float32(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return dot(self, as_float32(a), as_float32(b), d, input_precision, max_num_imprecise_acc)

    mp.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)


@contextlib.contextmanager
def interpreted(modules: list[str], mamba3_shims: bool = False) -> Iterator[list[types.ModuleType]]:
    """The ``modules`` of mamba_ssm imported under the stubs of the module docstring; skipped when the mamba-ssm
    distribution is not installed."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        pytest.skip("mamba_ssm is not installed (see tests/test_mamba_ssm_scan.py for a CPU install)")
    from triton.runtime.autotuner import Autotuner

    saved = own_modules()
    for name in saved:
        del sys.modules[name]
    try:
        with pytest.MonkeyPatch.context() as mp:
            package = types.ModuleType("mamba_ssm")
            package.__path__ = list(spec.submodule_search_locations)
            mp.setitem(sys.modules, "mamba_ssm", package)
            mp.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
            mp.setattr(torch.cuda, "get_device_properties",
                       lambda device: types.SimpleNamespace(multi_processor_count=4))
            if mamba3_shims:
                _mamba3_shims(mp)
            loaded = [importlib.import_module(m) for m in modules]
            for module in own_modules().values():
                for tuner in vars(module).values():
                    if isinstance(tuner, Autotuner):
                        mp.setattr(tuner, "configs", tuner.configs[:1])
            yield loaded
    finally:
        for name in own_modules():
            del sys.modules[name]
        sys.modules.update(saved)
