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

import torch
from torch import Tensor

from .config import StateConfig
from .data.streams import Batch
from .models.base import State, detach_state, map_state, reset_rows

CARRYING = ("previous", "state_passing")


def zero_state(template: State) -> State:
    return map_state(torch.zeros_like, template)


def random_noise_state(template: State, std: float, gen: torch.Generator) -> State:
    return map_state(lambda v: std * _randn_like(v, gen), template)


def fitted_noise_state(template: State, mean: State, std: State, gen: torch.Generator) -> State:
    return {k: mean[k] + std[k] * _randn_like(v, gen) for k, v in template.items()}


def state_passing_state(carried: State, gen: torch.Generator) -> State:
    """Row b receives the final state of row π(b), π a random permutation with no fixed point (B ≥ 2)."""
    batch = next(iter(carried.values())).shape[0]
    perm = derangement(batch, gen).to(next(iter(carried.values())).device)
    return map_state(lambda v: v[perm], carried)


def derangement(n: int, gen: torch.Generator) -> Tensor:
    """A uniformly random permutation of range(n) with π(i) ≠ i for all i (identity when n == 1)."""
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    while True:
        perm = torch.randperm(n, generator=gen)
        if not (perm == torch.arange(n)).any():
            return perm


def _randn_like(v: Tensor, gen: torch.Generator) -> Tensor:
    return torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device)


def _channel_dims(v: Tensor) -> list[int]:
    """Dimensions reduced by the fitted statistics: all but the channel/head dimension 1."""
    return [0] + list(range(2, v.dim()))


class StateSchemes:
    """Holds what a scheme needs across windows: the carried final states and the fitted statistics.

    ``initial(batch)`` gives the initial state of a window; ``observe(final)`` records its final state.
    Everything it holds is in ``state_dict()`` so a resumed run continues exactly.
    """

    def __init__(self, config: StateConfig, template: State, seed: int) -> None:
        self.config = config
        self.template = zero_state(template)
        self.gen = torch.Generator().manual_seed(seed + 7919)
        self.carried: State | None = None
        self.count = 0
        self.mean = {k: torch.zeros_like(v[0]) for k, v in self.template.items()}
        self.sq = {k: torch.zeros_like(v[0]) for k, v in self.template.items()}

    # -- the schemes --------------------------------------------------------------------------------------
    def initial(self, batch: Batch) -> State:
        cfg = self.config
        if cfg.scheme == "zero":
            return zero_state(self.template)
        if cfg.scheme == "random_noise":
            init = random_noise_state(self.template, cfg.noise_std, self.gen)
        elif cfg.scheme == "fitted_noise":
            if self.count == 0:
                init = zero_state(self.template)
            else:
                init = fitted_noise_state(self.template, *self.fitted(), self.gen)
        elif self.carried is None:
            init = zero_state(self.template)
        elif cfg.scheme == "previous":
            rows = self._reset_rows(batch)
            init = reset_rows(self.carried, rows) if rows.any() else self.carried
        else:  # state_passing
            init = state_passing_state(self.carried, self.gen)
        if cfg.p_zero > 0:
            drop = torch.rand(batch.x.shape[0], generator=self.gen) < cfg.p_zero
            if drop.any():
                init = reset_rows(init, drop.to(next(iter(init.values())).device))
        return init

    def _reset_rows(self, batch: Batch) -> Tensor:
        rows = torch.full((batch.x.shape[0],), bool(batch.wrapped))
        if self.config.reset == "document":
            rows = rows | batch.doc_reset
        return rows.to(next(iter(self.template.values())).device)

    def observe(self, final: State) -> None:
        """Record a window's final states: carried for the next window, folded into the fitted statistics."""
        final = detach_state(final)
        self.carried = final if self.config.scheme in CARRYING else None
        m = self.config.fit_momentum if self.count > 0 else 0.0
        for k, v in final.items():
            dims = _channel_dims(v)
            mean = v.float().mean(dim=dims, keepdim=True)[0].to(v.dtype).expand_as(v[0])
            sq = (v.float() ** 2).mean(dim=dims, keepdim=True)[0].to(v.dtype).expand_as(v[0])
            self.mean[k] = m * self.mean[k] + (1 - m) * mean
            self.sq[k] = m * self.sq[k] + (1 - m) * sq
        self.count += 1

    def forget(self) -> None:
        """Drop the carried states (after a non-finite step): the next window starts from zero."""
        self.carried = None

    def fitted(self) -> tuple[State, State]:
        """Running (mean, std) per state tensor, shaped like one batch row."""
        std = {k: (self.sq[k] - self.mean[k] ** 2).clamp_min(0).sqrt() for k in self.mean}
        return dict(self.mean), std

    # -- checkpointing ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Flat tensors for safetensors: carried.<key>, fit_mean.<key>, fit_sq.<key>, count, rng."""
        out: dict[str, Tensor] = {"count": torch.tensor(self.count), "rng": self.gen.get_state()}
        for k in self.mean:
            out[f"fit_mean.{k}"] = self.mean[k]
            out[f"fit_sq.{k}"] = self.sq[k]
        if self.carried is not None:
            out.update({f"carried.{k}": v for k, v in self.carried.items()})
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def load_state_dict(self, sd: dict[str, Tensor]) -> None:
        device = next(iter(self.template.values())).device
        self.count = int(sd["count"])
        self.gen.set_state(sd["rng"])
        # .clone(): fresh, aligned memory (see models.base.load_state) so a resume stays bit-identical
        self.mean = {k: sd[f"fit_mean.{k}"].to(device).clone() for k in self.template}
        self.sq = {k: sd[f"fit_sq.{k}"].to(device).clone() for k in self.template}
        if any(k.startswith("carried.") for k in sd):
            self.carried = {k: sd[f"carried.{k}"].to(device).clone() for k in self.template}
        else:
            self.carried = None
