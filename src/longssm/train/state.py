"""``TrainState``: everything a training run changes as it goes, and so everything its checkpoints hold.

A checkpoint saves ``TrainState.state_dict()`` and a resume restores it with ``load_state_dict``; on disk
(``checkpoint.py``):

    model.safetensors    "model"    the weights
    trainer.pt           "trainer"  optimizer, scheduler, scaler, torch_rng (+ cuda_rng on CUDA), step, bad_in_a_row,
                                    data_digest (the training data's ``Corpus.digest``; absent in older checkpoints)
    states.safetensors   "states"   the state schemes' carried states (all B streams), fitted statistics and RNG

so a resumed run continues bit-identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ckpt_io
from .schemes import StateSchemes


@dataclass
class TrainState:
    """The model and what trains it, at step ``step``."""

    model: torch.nn.Module
    """The unwrapped model (not its ``DistributedDataParallel`` or compiled wrapper)."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    """The float16 loss scaler (a no-op, with an empty state, for any other dtype)."""
    schemes: StateSchemes
    """This process's streams' carried states, the fitted-noise statistics and the schemes' RNG."""
    step: int = 0
    """Steps taken, which is also the data cursor: the next step trains on window ``step`` of every stream."""
    bad_in_a_row: int = 0
    """Non-finite steps in a row, as far as the host has read them back (``guard.NonFiniteGuard``)."""
    data_digest: str | None = None
    """Identity of the training data (``Corpus.digest``), saved so that a resume on other data is refused."""

    @property
    def device(self) -> torch.device:
        return self.schemes.device

    def state_dict(self) -> dict[str, Any]:
        """``{"model": weights, "trainer": trainer.pt's dict, "states": states.safetensors' tensors}`` (see the module
        docstring). Called in every process of a run: the carried states of all streams are gathered. The RNG is
        torch's global one (CPU, and CUDA when training there); the schemes draw from their own generator."""
        trainer: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "bad_in_a_row": self.bad_in_a_row,
        }
        if self.data_digest is not None:
            trainer["data_digest"] = self.data_digest
        if self.device.type == "cuda":
            trainer["cuda_rng"] = torch.cuda.get_rng_state()
        return {"model": self.model.state_dict(), "trainer": trainer, "states": self.schemes.state_dict()}

    def load_state_dict(self, sd: dict[str, Any], source: str | Path = "the state dict") -> None:
        """Inverse of ``state_dict``; a trainer state may lack ``scaler`` (the scaler keeps its state) and
        ``bad_in_a_row`` (0). ``source`` (where ``sd["model"]`` was read) is named by the ``UserError`` for weights
        that do not fit the model."""
        ckpt_io.apply_weights(self.model, sd["model"], source)
        trainer = sd["trainer"]
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        if trainer.get("scaler"):  # empty when the checkpointed run did not scale its loss
            self.scaler.load_state_dict(trainer["scaler"])
        torch.set_rng_state(trainer["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in trainer:
            torch.cuda.set_rng_state(trainer["cuda_rng"])
        self.schemes.load_state_dict(sd["states"])
        self.step, self.bad_in_a_row = int(trainer["step"]), int(trainer.get("bad_in_a_row", 0))
