"""Training: stateful truncated BPTT over B contiguous streams (``loop.py``), its state schemes (``schemes.py``)."""

from .loop import Stopped, train

__all__ = ["Stopped", "train"]
