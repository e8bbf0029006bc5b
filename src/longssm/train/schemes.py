"""Hidden-state initialisation schemes for training windows (``state.scheme``).

Each training window k of stream b starts from an initial state s_k[b]. The schemes of LongSSM (Wang 2024)
and of Buitrago Ruiz & Gu (2025, "Understanding and Improving Length Generalization in Recurrent Models"):

- ``zero``          s_k = 0                                        (the baseline: every window forgets)
- ``previous``      s_k = stopgrad(final state of window k−1 of the same stream)   (stateful TBPTT / "TBTT")
- ``random_noise``  s_k ~ N(0, σ²)                                  (one σ for every layer)
- ``fitted_noise``  s_k ~ N(μ_c, σ_c²), μ, σ per layer and channel/head c, fitted as running statistics of
                    the final states seen in training
- ``state_passing`` s_k = stopgrad(final state of window k−1 of a *different* stream): an unrelated sequence

States are flat ``dict[str, Tensor]`` (see ``models/base.py``), so no scheme knows the model family. On top
of the scheme: ``reset`` zeroes a carried row at its stream's wrap (always) and at a document start
(``state.reset=document``), and ``p_zero`` starts each row from zero with probability p.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..config import StateConfig
from ..data.streams import Batch
from ..models.base import State, detach_state, map_state, reset_rows
from ..runtime.device import host_to_device
from ..runtime.distributed import ALONE, Shard

CARRYING = ("previous", "state_passing")


def zero_state(template: State) -> State:
    return map_state(torch.zeros_like, template)


def random_noise_state(template: State, std: float, gen: torch.Generator, shard: Shard = ALONE) -> State:
    return map_state(lambda v: std * _randn_like(v, gen, shard), template)


def fitted_noise_state(template: State, mean: State, std: State, gen: torch.Generator, shard: Shard = ALONE) -> State:
    return {k: mean[k] + std[k] * _randn_like(v, gen, shard) for k, v in template.items()}


def state_passing_state(carried: State, gen: torch.Generator, shard: Shard = ALONE) -> State:
    """Row b receives the final state of row π(b), π a random permutation with no fixed point (B ≥ 2) of the
    streams of every process (whose carried states are gathered)."""
    first = next(iter(carried.values()))
    batch_size = first.shape[0] * shard.world
    perm = host_to_device(derangement(batch_size, gen)[shard.streams(batch_size)], first.device)
    return map_state(lambda v: shard.gather_rows(v)[perm], carried)


def derangement(n: int, gen: torch.Generator) -> Tensor:
    """A uniformly random permutation of range(n) with π(i) ≠ i for all i (identity when n == 1).

    Drawn on the host from the CPU generator ``gen`` by rejection; the fixed-point check reads host memory only.
    """
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    while True:
        perm = torch.randperm(n, generator=gen)
        if (perm.numpy() != np.arange(n)).all():
            return perm


def _randn_like(v: Tensor, gen: torch.Generator, shard: Shard) -> Tensor:
    """Standard normal noise shaped like ``v``, this process's rows of ``v``, drawn from the CPU generator ``gen``
    for the rows of every process (so a run's noise depends on neither the device nor the number of processes),
    then copied to ``v``'s device."""
    noise = torch.randn((v.shape[0] * shard.world, *v.shape[1:]), generator=gen, dtype=v.dtype)
    return host_to_device(noise[shard.streams(noise.shape[0])], v.device)


def _channel_dims(v: Tensor) -> list[int]:
    """Dimensions reduced by the fitted statistics: all but the channel/head dimension 1."""
    return [0, *range(2, v.dim())]


class StateSchemes:
    """Holds what a scheme needs across windows: the carried final states and the fitted statistics.

    ``initial(batch)`` gives the initial state of a window; ``observe(final, finite)`` records its final state.
    Neither reads a device tensor back to the host, so a training step that calls them never waits for the
    device. The fitted statistics (running mean and mean square of the final states, per layer and channel/head)
    exist only for ``fitted_noise``. Everything held is in ``state_dict()`` so a resumed run continues exactly.

    Several processes (``shard``): ``template`` holds this process's streams, ``shard.streams(B)``. Noise and
    ``p_zero`` draws are made for all B streams in every process (each keeps its rows), the fitted statistics are
    averaged over the processes and ``state_passing`` gathers every carried state, so the run equals a one-process
    run; ``state_dict`` gathers the carried states of all B streams and ``load_state_dict`` takes this process's
    rows, whatever number of processes saved them.
    """

    def __init__(self, config: StateConfig, template: State, seed: int, shard: Shard = ALONE) -> None:
        self.config = config
        self.shard = shard
        self.template = zero_state(template)
        self.device = next(iter(template.values())).device
        self.gen = torch.Generator().manual_seed(seed + 7919)
        self.carried: State | None = None
        # fitted statistics, kept for fitted_noise only: per state tensor the running mean and mean square (shaped
        # like one batch row) and the number of finite windows folded in (a device tensor, never read back)
        self.fitting = config.scheme == "fitted_noise"
        self.mean: State = {k: torch.zeros_like(v[0]) for k, v in self.template.items()} if self.fitting else {}
        self.sq: State = {k: torch.zeros_like(v[0]) for k, v in self.template.items()} if self.fitting else {}
        self.count = torch.zeros((), dtype=torch.long, device=self.device)

    # -- the schemes --------------------------------------------------------------------------------------
    def initial(self, batch: Batch) -> State:
        cfg = self.config
        if cfg.scheme == "zero":
            return zero_state(self.template)
        if cfg.scheme == "random_noise":
            init = random_noise_state(self.template, cfg.noise_std, self.gen, self.shard)
        elif cfg.scheme == "fitted_noise":  # before the first finite window mean = std = 0: exactly zero
            init = fitted_noise_state(self.template, *self.fitted(), self.gen, self.shard)
        elif self.carried is None:
            init = zero_state(self.template)
        elif cfg.scheme == "previous":
            init = self._previous(batch)
        else:  # state_passing
            init = state_passing_state(self.carried, self.gen, self.shard)
        p_zero = cfg.zero_start_probability
        if p_zero > 0:
            batch_size = batch.x.shape[0] * self.shard.world
            drop = torch.rand(batch_size, generator=self.gen)[self.shard.streams(batch_size)] < p_zero
            init = reset_rows(init, host_to_device(drop, self.device))
        return init

    def _previous(self, batch: Batch) -> State:
        """The carried states, zeroed in every row at the epoch wrap and, with ``reset=document``, in the rows
        whose stream started a new document since the previous window."""
        if batch.wrapped:
            return zero_state(self.template)
        if self.config.reset == "document":
            return reset_rows(self.carried, host_to_device(batch.doc_reset, self.device))
        return self.carried

    def observe(self, final: State, finite: Tensor | None = None) -> None:
        """Record a window's final states: carried to the next window, folded into the fitted statistics.

        ``finite``: 0-dim bool tensor on the device, False for a non-finite (skipped) step; then nothing is
        carried (the next window starts from zero) and the statistics are left as they were. It is applied
        with ``torch.where``, never read back. None means True.
        """
        final = detach_state(final)
        if self.config.scheme in CARRYING:
            self.carried = final if finite is None else {k: torch.where(finite, v, 0.0) for k, v in final.items()}
        if self.fitting:
            self._fit(final, finite)

    def _fit(self, final: State, finite: Tensor | None) -> None:
        """Exponential moving mean and mean square over the batch and all but the channel/head dimension;
        the first finite window sets them."""
        m = torch.where(self.count > 0, self.config.fit_momentum, 0.0)
        for k, v in final.items():
            dims = _channel_dims(v)
            mean = self.shard.mean(v.float().mean(dim=dims, keepdim=True)[0]).to(v.dtype).expand_as(v[0])
            sq = self.shard.mean((v.float() ** 2).mean(dim=dims, keepdim=True)[0]).to(v.dtype).expand_as(v[0])
            mean, sq = m * self.mean[k] + (1 - m) * mean, m * self.sq[k] + (1 - m) * sq
            if finite is not None:
                mean, sq = torch.where(finite, mean, self.mean[k]), torch.where(finite, sq, self.sq[k])
            self.mean[k], self.sq[k] = mean, sq
        self.count = self.count + (1 if finite is None else finite.long())

    def fitted(self) -> tuple[State, State]:
        """Running (mean, std) per state tensor, shaped like one batch row (empty unless ``fitted_noise``)."""
        std = {k: (self.sq[k] - self.mean[k] ** 2).clamp_min(0).sqrt() for k in self.mean}
        return dict(self.mean), std

    # -- checkpointing ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Flat tensors for safetensors: rng, carried.<key> (carrying schemes; all B streams, gathered from every
        process), and for fitted_noise count, fit_mean.<key>, fit_sq.<key>."""
        out: dict[str, Tensor] = {"rng": self.gen.get_state()}
        if self.fitting:
            out["count"] = self.count
            out.update({f"fit_mean.{k}": v for k, v in self.mean.items()})
            out.update({f"fit_sq.{k}": v for k, v in self.sq.items()})
        if self.carried is not None:
            out.update({f"carried.{k}": self.shard.gather_rows(v) for k, v in self.carried.items()})
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def load_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Inverse of ``state_dict``. Statistics are read by fitted_noise only (one resumed from a checkpoint of
        another scheme starts fitting afresh); carried states are read when present."""
        self.gen.set_state(sd["rng"])
        # .clone(): fresh, aligned memory (see models.base.load_state) so a resume stays bit-identical
        if self.fitting and "count" in sd:
            self.count = sd["count"].to(self.device).clone()
            self.mean = {k: sd[f"fit_mean.{k}"].to(self.device).clone() for k in self.template}
            self.sq = {k: sd[f"fit_sq.{k}"].to(self.device).clone() for k in self.template}
        if any(k.startswith("carried.") for k in sd):
            rows = self.shard.streams(sd[f"carried.{next(iter(self.template))}"].shape[0])
            self.carried = {k: sd[f"carried.{k}"][rows].to(self.device).clone() for k in self.template}
        else:
            self.carried = None
