"""Several processes training one run (``torchrun``): which streams a process owns, and the collectives.

``torchrun --nproc-per-node W -m longssm train ...`` starts W processes and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each (several nodes: through torchrun's rendezvous). Process
r of W (its *rank*) owns streams ``stream_slice(r, W, B)`` of the B streams of the global batch and their carried
states; the model is wrapped in ``DistributedDataParallel``, which averages the gradients over the processes, so a
step sees the gradient of the whole global batch. Backends: NCCL when training on CUDA (each process on
``cuda:LOCAL_RANK``), gloo on the CPU; CPU tensors and host-side flags always go through a gloo group.

A process that was not started by torchrun (no ``WORLD_SIZE``, or 1) is the only rank: ``ALONE``, whose
collectives return their input.
"""

from __future__ import annotations

import atexit
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from ..errors import UserError


def stream_slice(rank: int, world: int, batch_size: int) -> slice:
    """The streams (rows of the global batch) that ``rank`` of ``world`` processes owns: the r-th of W equal,
    contiguous blocks, so that the assignment depends on (rank, world size) only. ``UserError`` unless W divides B."""
    if batch_size % world:
        raise UserError(f"train.batch_size={batch_size} streams cannot be split evenly over {world} processes; "
                        f"use a multiple of {world}")
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


def part(rank: int, world: int, n: int) -> slice:
    """The r-th of W contiguous parts of ``range(n)``, sizes differing by at most one (evaluation sequences)."""
    return slice(n * rank // world, n * (rank + 1) // world)


@dataclass(frozen=True)
class Shard:
    """This process's place in the run: rank ``rank`` of ``world`` processes, and the groups its collectives use."""

    rank: int = 0
    world: int = 1
    host_group: Any = None
    """Process group for CPU tensors (gloo); None: the default group (when that is gloo already)."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes logs, progress bars, the run's files and checkpoints."""
        return self.rank == 0

    def streams(self, batch_size: int) -> slice:
        """This process's streams of a global batch of ``batch_size`` (``stream_slice``)."""
        return stream_slice(self.rank, self.world, batch_size)

    def part(self, n: int) -> slice:
        """This process's part of ``n`` evaluation sequences or streams (``part``)."""
        return part(self.rank, self.world, n)

    def sum(self, t: Tensor) -> Tensor:
        """``t`` summed over the processes (a new tensor; CPU tensors through the gloo group)."""
        return self._reduce(t, dist.ReduceOp.SUM)

    def max(self, t: Tensor) -> Tensor:
        """The elementwise maximum of ``t`` over the processes (a new tensor)."""
        return self._reduce(t, dist.ReduceOp.MAX)

    def _reduce(self, t: Tensor, op: dist.ReduceOp) -> Tensor:
        if self.world == 1:
            return t
        out = t.clone()
        dist.all_reduce(out, op=op, group=self.host_group if out.device.type == "cpu" else None)
        return out

    def mean(self, t: Tensor) -> Tensor:
        """``t`` averaged over the processes."""
        return t if self.world == 1 else self.sum(t) / self.world

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is True in any process (a host-side all-reduce: never waits for a GPU)."""
        if self.world == 1:
            return flag
        return bool(self.sum(torch.tensor([int(flag)])).item())

    def all(self, flag: bool) -> bool:
        """True when ``flag`` is True in every process (a host-side all-reduce: never waits for a GPU)."""
        return not self.any(not flag)

    def gather_rows(self, t: Tensor) -> Tensor:
        """Every process's rows of ``t`` (equally many in each), concatenated in rank order along dimension 0."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def agree(self, loss: Tensor, finite: Tensor) -> tuple[Tensor, Tensor]:
        """The mean of every process's ``loss`` and whether every process's step is ``finite`` (0-dim tensors on the
        device), from one all-reduce that the host does not wait for. Each process then skips, or takes, the same
        steps."""
        if self.world == 1:
            return loss, finite
        both = self.sum(torch.stack((loss.float(), (~finite).float())))
        return both[0] / self.world, both[1] == 0

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` in ``DistributedDataParallel`` (its constructor copies rank 0's weights to every process and
        acts as a barrier); ``model`` itself for a single process."""
        if self.world == 1:
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


ALONE = Shard()
"""The ``Shard`` of a process that is the only one (the default wherever a shard is optional)."""


def no_sync(model: torch.nn.Module, sync: bool) -> AbstractContextManager[Any]:
    """A context in which a backward pass leaves the gradients unsynchronised (``sync`` False: an accumulation
    micro-batch before the last one), for a ``DistributedDataParallel`` model; else nothing."""
    if sync or not isinstance(model, DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


def init(device: torch.device) -> tuple[Shard, torch.device]:
    """Join the process group that torchrun's environment describes (``WORLD_SIZE`` > 1) and return this process's
    ``Shard`` and its device (``cuda:LOCAL_RANK`` when training on CUDA). Without torchrun: ``(ALONE, device)``.
    Joining twice in a process reuses the group; it is destroyed when the process exits."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return ALONE, device
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
    host_group = dist.new_group(backend="gloo") if device.type == "cuda" else None
    return Shard(rank, world, host_group), device
