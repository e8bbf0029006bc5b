"""The device a command runs on, its autocast context, and copies to it that do not make the host wait."""

from __future__ import annotations

import torch

from ..errors import UserError


def resolve_device(spec: str, flag: str = "train.device") -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; errors name ``flag``, the option set."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{flag}={spec} but CUDA is not available on this machine")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise UserError(f"{flag} must be auto, cpu, cuda or cuda:N; got {spec!r}") from None


def autocast_for(device: torch.device, dtype: str) -> torch.autocast:
    """The autocast context of ``train.dtype``: off for float32; bfloat16/float16 on CUDA only (``UserError`` on the
    CPU, whose training runs in float32)."""
    if dtype == "float32":
        return torch.autocast(device.type, enabled=False)
    if device.type != "cuda":
        raise UserError(f"train.dtype={dtype} needs a CUDA device (CPU training runs in float32)")
    return torch.autocast("cuda", dtype=getattr(torch, dtype))


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without making the host wait for the device.

    On CUDA a plain ``.to(device)`` from pageable memory synchronises the stream; a copy from pinned memory
    with ``non_blocking=True`` is queued like a kernel. Other devices: a plain copy.
    """
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
