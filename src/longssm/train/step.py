"""One training step: ``train_step(state, batch, ctx)``.

    s_k         = scheme's initial state for this window            (gradients stop at s_k: it is detached)
    logits, s'  = model(x, s_k)                                      in ``grad_accum`` micro-batches of streams
    loss        = cross-entropy(logits, y); unscale; clip; agreed finite flag; AdamW step (skipped when not finite)
    scheduler step; scheme.observe(s', finite)

A step reads nothing back from the device: batches and the schemes' masks and noise are copied in without waiting
(``runtime.device.host_to_device``), and whether a step is finite (loss, final states and gradient norm) is a 0-dim
device tensor ``finite`` that is *applied* on the device, not read:
- the fused AdamW skips its whole update (weights, moments and step count) when ``optimizer.found_inf`` is 1 —
  the hook ``torch.amp.GradScaler`` uses for fused optimizers;
- ``scheme.observe(s', finite)`` carries zeros instead of a non-finite step's states (the next window starts
  from zero) and leaves the fitted statistics unchanged.
The host learns of skipped steps later, at a log step (guard.py): they never touched the weights, the optimizer or
the carried states.

``train.dtype float16`` (CUDA) scales the loss with a ``torch.amp.GradScaler``: gradients are unscaled before
clipping, a step whose gradients overflowed is skipped like any non-finite step (and the scale halved), and the
scaler's state is part of the checkpoint. ``bfloat16`` needs no scaler; ``float32`` turns autocast off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.streams import Batch
from ..models.base import State, concat_states, select_rows
from ..runtime import distributed
from ..runtime.device import host_to_device
from .state import TrainState


@dataclass(frozen=True)
class StepContext:
    """How this process runs a step: the modules it calls, its device, precision and place in the run."""

    forward: torch.nn.Module
    """What a micro-batch calls: ``wrapped``, or ``torch.compile(wrapped)`` (``train.compile``)."""
    wrapped: torch.nn.Module
    """The model in ``DistributedDataParallel`` (several processes), else the model itself."""
    device: torch.device
    autocast: torch.autocast
    shard: distributed.Shard
    grad_accum: int
    grad_clip: float
    """Maximum gradient norm; 0: no clipping."""


@dataclass(frozen=True)
class StepMetrics:
    """What a step measured, as device tensors that nothing has read back yet."""

    loss: Tensor
    """0-dim: the step's mean loss over the global batch (the non-finite value itself for a skipped step)."""
    finite: Tensor
    """0-dim bool: the loss, the final states and the gradient norm were finite in every process."""
    grad_norm: Tensor
    """0-dim: this process's gradient norm before clipping."""
    final: State
    """The final states of this process's streams."""


def train_step(state: TrainState, batch: Batch, ctx: StepContext) -> StepMetrics:
    """Train ``state`` on ``batch`` (this process's streams of window ``state.step``) and advance it one step; no
    host sync (see the module docstring). Returns the step's metrics as device tensors."""
    init = state.schemes.initial(batch)
    loss, final = forward_backward(ctx, batch, init, state.scaler)
    state.scaler.unscale_(state.optimizer)  # clip the true gradients
    max_norm = ctx.grad_clip if ctx.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm)
    # every process takes or skips the step: finite in all of them; the loss of the global batch
    loss, finite = ctx.shard.agree(loss, torch.isfinite(loss) & torch.isfinite(grad_norm) & all_finite(final))
    state.optimizer.found_inf = (~finite).float()  # 1: the fused update is skipped on the device
    state.optimizer.step()
    state.scaler.update()  # float16: halve the scale after an overflow, double it after 2000 clean steps
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    state.schemes.observe(final, finite)
    state.step += 1
    return StepMetrics(loss.detach(), finite, grad_norm, final)


def forward_backward(ctx: StepContext, batch: Batch, init: State, scaler: torch.amp.GradScaler) -> tuple[Tensor, State]:
    """Forward and backward passes of one step over ``batch`` (this process's streams) in ``ctx.grad_accum``
    micro-batches of consecutive streams, each started from its own rows of ``init``. A micro-batch's mean loss is
    divided by ``grad_accum``, so the accumulated gradients are those of one pass over every stream;
    ``ctx.wrapped`` synchronises them in the last backward only. Returns the step's mean loss (detached) and the
    final states of every stream."""
    accum = ctx.grad_accum
    rows = batch.x.shape[0] // accum
    losses, finals = [], []
    for i in range(accum):
        part = slice(i * rows, (i + 1) * rows)
        micro = batch.rows(part)
        x, y = host_to_device(micro.x, ctx.device), host_to_device(micro.y, ctx.device)
        with distributed.no_sync(ctx.wrapped, sync=i == accum - 1):
            with ctx.autocast:
                logits, final = ctx.forward(x, select_rows(init, part))
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / accum
            scaler.scale(loss).backward()
        losses.append(loss.detach())
        finals.append(final)
    return sum(losses), concat_states(finals)


def all_finite(state: State) -> Tensor:
    """0-dim bool tensor on the state's device: every value of every state tensor is finite (not read back)."""
    return torch.stack([torch.isfinite(v).all() for v in state.values()]).all()
