"""Which implementation of a family's recurrence runs on a device: the one place that reads ``model.scan``.

    chunked     the fast exact algorithm of each family (blocked scans, ``nn.GRU`` / ``nn.LSTM``)
    reference   the plain sequential loop of the same equations, kept as the oracle of every other implementation
    triton      our Triton Mamba-1 scan (``selective_scan_triton.py``)
    mamba_ssm   the fused kernels of the optional ``mamba_ssm`` package: Mamba-2's SSD (``ssd_mamba_ssm.py``) and
                Mamba-3's SISO kernel (``mamba3_mamba_ssm.py``)
    fla         the chunk kernels of the optional ``fla-core`` package (``fla_kernels.py``): DeltaNet, Gated
                DeltaNet, GLA
    auto        the best of these that runs here

A family declares the fast kernels it has (``fast_kernels`` of its block class: Mamba-1 ``("triton",)``, Mamba-2
``("mamba_ssm",)``, Mamba-3 ``("mamba_ssm_mamba3",)`` (selected by ``model.scan mamba_ssm`` too), the delta-rule
and GLA mixers ``("fla",)``, the others and user blocks none); ``longssm.models.build_model`` calls
``resolve_scan`` once per block when it builds the model, and ``longssm.models.set_scan`` again after the model
moves or ``model.scan`` changes. The blocks only read the stored choice: nothing here runs during a forward pass.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Collection
from typing import Literal

import torch

from ..errors import UserError, first_line
from . import fla_kernels, mamba3_mamba_ssm, ssd_mamba_ssm

__all__ = ["SCANS", "SELF_CHECK_TOL", "ScanImpl", "mamba_ssm_unavailable", "resolve_scan", "triton_interpreted",
           "triton_self_check"]

ScanImpl = Literal["chunked", "reference", "triton", "mamba_ssm", "fla"]
"""What ``resolve_scan`` gives: the implementation a block runs."""

SCANS = ("auto", "chunked", "reference", "triton", "mamba_ssm", "fla")
"""The values of ``model.scan``."""

MAMBA_SSM_KERNELS = {"mamba_ssm": ssd_mamba_ssm.load, "mamba_ssm_mamba3": mamba3_mamba_ssm.load}
"""The kernels of the mamba_ssm package a family may declare, each with its loader: ``model.scan mamba_ssm`` runs
whichever the family has (and ``resolve_scan`` returns ``mamba_ssm`` for both)."""


def resolve_scan(
    scan: str, device: torch.device, kernels: Collection[str] = (), dtype: torch.dtype | None = None
) -> ScanImpl:
    """The implementation ``model.scan`` selects on ``device`` for a family whose GPU kernels are ``kernels``.

    ``chunked`` and ``reference`` run everywhere. Two GPU kernels, each tested against ``reference``: ``triton``
    (Mamba-1 passes ``kernels=("triton",)``) and ``mamba_ssm`` (Mamba-2 passes ``kernels=("mamba_ssm",)``). A kernel
    the family does not have runs ``chunked`` (so one config can sweep families); a kernel it has that cannot run
    here is a ``UserError``: its package is missing, or the device is not CUDA. Triton kernels also run on the CPU
    when ``TRITON_INTERPRET=1`` was set before they were built (Triton's interpreter: slow, for tests).

    ``auto`` is the best available: ``chunked`` on the CPU (interpreter or not) and for float64 models (``dtype``:
    the kernels compute in float32). On CUDA, Mamba-1 gets ``triton`` when triton is installed and
    ``triton_self_check`` passes on ``device`` (run once per device and process; a failure warns once, naming the
    reason, and gives ``chunked``); Mamba-2 gets ``mamba_ssm`` when the package imports, else ``chunked``; the
    delta-rule and GLA families get ``fla`` when fla-core imports and ``fla_kernels.self_check`` passes (once per
    device, a failure warns once), else ``chunked``. ``fla`` refuses the CPU even under the interpreter (fla 0.6's
    autotuner needs a GPU driver).
    """
    if scan not in SCANS:
        raise UserError(f"model.scan must be auto, chunked, reference, triton, mamba_ssm or fla; got {scan!r}")
    if scan in ("chunked", "reference"):
        return scan
    mamba_kernel = next((k for k in kernels if k in MAMBA_SSM_KERNELS), None)
    if scan == "auto":
        if device.type != "cuda" or dtype == torch.float64:
            return "chunked"
        if "triton" in kernels and _triton_passes_self_check(device):
            return "triton"
        if mamba_kernel == "mamba_ssm" and mamba_ssm_unavailable() is None:
            return "mamba_ssm"
        if mamba_kernel == "mamba_ssm_mamba3" and _mamba3_passes_self_check(device):
            return "mamba_ssm"
        if "fla" in kernels and _fla_passes_self_check(device):
            return "fla"
        return "chunked"
    if scan not in kernels and not (scan == "mamba_ssm" and mamba_kernel):
        return "chunked"
    if scan == "fla":
        if device.type != "cuda":  # checked first: importing fla on a CPU machine only prints its warnings
            raise UserError(f"model.scan fla runs on CUDA devices (fla's kernels do not run under Triton's "
                            f"interpreter); the model is on {device.type}: use model.scan chunked")
        reason = fla_kernels.fla_unavailable()
        if reason is not None:
            raise UserError(f"model.scan fla needs the fla-core package (pip install longssm[fla]): {reason}")
        return scan
    if scan == "triton":
        try:
            from . import selective_scan_triton
        except ImportError as err:
            raise UserError("model.scan triton needs the triton package: pip install longssm[gpu]") from err
        interpreted = selective_scan_triton.INTERPRETED
    else:
        interpreted = triton_interpreted()
    if device.type != "cuda" and not interpreted:  # first: a CPU build of mamba_ssm fails to import its CUDA parts
        raise UserError(f"model.scan {scan} runs on CUDA devices (or on the CPU under TRITON_INTERPRET=1); "
                        f"the model is on {device.type}: use model.scan chunked")
    if scan == "mamba_ssm":
        reason = mamba_ssm_unavailable(mamba_kernel or "mamba_ssm")
        if reason is not None:
            raise UserError(f"model.scan mamba_ssm needs the mamba_ssm package (pip install mamba-ssm): {reason}")
    return scan


@functools.cache
def mamba_ssm_unavailable(kernel: str = "mamba_ssm") -> str | None:
    """None when the loader of ``kernel`` (``MAMBA_SSM_KERNELS``: Mamba-2's SSD by default) works, else why not:
    the import error's type and first line (checked once per kernel)."""
    try:
        MAMBA_SSM_KERNELS[kernel]()
    except Exception as err:  # ImportError, or a broken CUDA / Triton build
        return f"{type(err).__name__}: {first_line(err)}"
    return None


def triton_interpreted() -> bool:
    """True when Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels built now run on CPU tensors."""
    try:
        import triton
    except ImportError:
        return False
    return bool(triton.knobs.runtime.interpret)


SELF_CHECK_TOL = 1e-4
"""Largest relative error (norm) of the Triton scan in ``triton_self_check``; float32 is ~1e-6 there."""


def triton_self_check(device: torch.device) -> str | None:
    """Run the Triton Mamba-1 scan once on ``device`` against the chunked scan: None if they agree, else why not.

    The problem is tiny and shaped like the mixer's calls: b = 2, l = 37 (a partial second checkpoint chunk),
    e = 40 (a partial second block of channels), n = 16, with D, z, Δ bias, softplus and an initial state. The
    Triton scan runs in float32 and ``selective_scan_fast`` in float64 on the same device; y, the final state and
    the gradients of a fixed random linear function of both w.r.t. every input must agree to ``SELF_CHECK_TOL``
    (relative norm). Any exception (no such device, a kernel that does not compile or launch) is a failure too.
    The inputs come from a private generator, so the caller's random stream is untouched.
    """
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
    try:
        from . import selective_scan_triton
        from .selective_scan import selective_scan_fast

        b, l, e, n = 2, 37, 40, 16
        shapes = [(b, l, e), (b, l, e), (e, n), (b, l, n), (b, l, n), (e,), (b, l, e), (e,), (b, e, n)]
        gen = torch.Generator().manual_seed(0)
        inputs = [torch.randn(s, generator=gen, dtype=torch.float64).to(device) for s in shapes]
        inputs[2] = -inputs[2].abs() - 0.1  # A < 0
        weights = [torch.randn(s, generator=gen, dtype=torch.float64).to(device) for s in ((b, l, e), (b, e, n))]
        results = []
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for scan, dtype in ((selective_scan_fast, torch.float64),
                                (selective_scan_triton.selective_scan_triton, torch.float32)):
                leaves = {k: v.to(dtype).requires_grad_() for k, v in zip(names, inputs)}
                y, h = scan(**leaves, delta_softplus=True)
                loss = (y * weights[0].to(dtype)).sum() + (h * weights[1].to(dtype)).sum()
                grads = torch.autograd.grad(loss, list(leaves.values()))
                results.append([t.detach().double().cpu() for t in (y, h, *grads)])
    except Exception as err:
        return f"{type(err).__name__}: {first_line(err)}"
    for name, ref, got in zip(["y", "final state", *(f"grad {k}" for k in names)], *results):
        err = ((got - ref).norm() / ref.norm().clamp_min(1e-6)).item()
        if not err < SELF_CHECK_TOL:  # NaN fails too
            return f"{name} off by {err:.1e} (relative)"
    return None


def _warn_unless_passed(reason: str | None, failed: str, device: torch.device) -> bool:
    """True when a self-check passed (``reason`` None); else one warning, ``model.scan auto: <failed> self-check on
    <device> (<reason>); using chunked``, and False."""
    if reason is not None:
        warnings.warn(f"model.scan auto: {failed} self-check on {device} ({reason}); using chunked", RuntimeWarning,
                      stacklevel=3)
    return reason is None


@functools.cache
def _triton_passes_self_check(device: torch.device) -> bool:
    """``triton_self_check`` once per device: False without triton (silently) or after a failure (one warning)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return _warn_unless_passed(triton_self_check(device), "the Triton scan failed its", device)


@functools.cache
def _fla_passes_self_check(device: torch.device) -> bool:
    """``fla_kernels.self_check`` once per device: False without fla (silently) or after a failure (one warning)."""
    if fla_kernels.fla_unavailable() is not None:
        return False
    return _warn_unless_passed(fla_kernels.self_check(device), "fla's kernels failed their", device)


@functools.cache
def _mamba3_passes_self_check(device: torch.device) -> bool:
    """``mamba3_mamba_ssm.self_check`` once per device: False without the package (silently) or after a failure
    (one warning)."""
    if mamba_ssm_unavailable("mamba_ssm_mamba3") is not None:
        return False
    return _warn_unless_passed(mamba3_mamba_ssm.self_check(device), "mamba_ssm's Mamba-3 kernel failed its", device)
