"""The non-finite guard: which steps were skipped, read back from the device only at log and checkpoint steps.

A step whose loss, final states or gradient norm are not finite is skipped on the device (``step.train_step``), so
the host needs to know of it only to report it: at every log step, checkpoint and the last step it reads the
unread steps' losses and flags in one transfer, writes a ``skipped`` record for each non-finite step and stops the
run once ``max_bad_steps`` of them came in a row (noticed up to ``log_every − 1`` steps late, having touched
nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from .. import checkpoint as ckpt_io
from ..errors import UserError
from .metrics import MetricsLog
from .state import TrainState
from .step import StepMetrics


class NonFiniteGuard:
    """Holds the (loss, finite) device tensors of the steps the host has not read yet."""

    def __init__(self, max_bad_steps: int, log: MetricsLog, note: Callable[[str], None], run_dir: Path) -> None:
        self.max_bad_steps = max_bad_steps
        self.log = log
        self.note = note
        self.run_dir = run_dir
        self.unread: list[tuple[Tensor, Tensor]] = []
        self.last_loss: float | None = None
        """The loss of the last finite step read back; None (JSON null) until there was one."""

    def record(self, metrics: StepMetrics) -> None:
        """Keep a step's loss and finite flag for the next ``read_back`` (nothing is read now)."""
        self.unread.append((metrics.loss, metrics.finite))

    def read_back(self, state: TrainState) -> list[float]:
        """The finite losses of the unread steps (those up to ``state.step``), in one host sync. Counts the
        non-finite steps in ``state.bad_in_a_row``, logs each one, and raises ``UserError`` at ``max_bad_steps``
        in a row."""
        finite: list[float] = []
        for s, (value, ok) in enumerate(read_back(self.unread), start=state.step - len(self.unread) + 1):
            if ok:
                state.bad_in_a_row, self.last_loss = 0, value
                finite.append(value)
                continue
            state.bad_in_a_row += 1
            self.log.write({"step": s, "skipped": True, "reason": "non-finite loss, state or gradient"})
            self.note(f"step {s}: non-finite loss/state/gradient, step skipped ({state.bad_in_a_row} in a row)")
            if state.bad_in_a_row >= self.max_bad_steps:
                raise UserError(
                    f"training stopped: {state.bad_in_a_row} non-finite steps in a row at step {s} "
                    f"(last good checkpoint: {ckpt_io.latest_checkpoint(self.run_dir) or 'none'}); "
                    "try a lower train.lr"
                )
        self.unread.clear()
        return finite


def read_back(unread: list[tuple[Tensor, Tensor]]) -> list[tuple[float, bool]]:
    """The (loss, finite) of each step in ``unread``, copied from the device in one transfer (one host sync)."""
    if not unread:
        return []
    rows = torch.stack([torch.stack((loss, finite.to(loss.dtype))) for loss, finite in unread]).tolist()
    return [(value, bool(ok)) for value, ok in rows]
