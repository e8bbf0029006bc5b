"""Training: the loop (``loop.py``) over a ``TrainState`` (``state.py``) advanced by ``train_step`` (``step.py``),
with the state schemes (``schemes.py``), the schedule (``schedule.py``) and the loop's collaborators: setup, resume,
checkpointing, metrics, the non-finite guard, validation and signals."""

from .loop import train
from .schedule import lr_at, param_groups
from .signals import Stopped
from .state import TrainState
from .step import StepMetrics, train_step

__all__ = ["StepMetrics", "Stopped", "TrainState", "lr_at", "param_groups", "train", "train_step"]
