"""Stopping a run cleanly on a signal: Ctrl-C (SIGINT) or SIGTERM lets the step in flight finish and be saved."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class Stopped(KeyboardInterrupt):
    """Training stopped by a signal after saving the step in flight; ``signum``: SIGINT (Ctrl-C) or SIGTERM (a
    scheduler's preemption, ``kill``, torchrun shutting its workers down). The message names the checkpoint."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum


STOP_SIGNALS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
"""The signals that stop training after saving the step in flight -> their default handlers."""


@contextmanager
def deferred_stop_signals() -> Iterator[Callable[[], int]]:
    """Within the block a first SIGINT (Ctrl-C) or SIGTERM only records its number, which the yielded callable
    returns (0: none yet), so the step in flight completes and can be saved; the signal's default handler is back at
    once, so a second one acts where it lands (checkpoint writes are atomic: the saved ones stay intact). A signal
    is left alone outside the main thread, or when it does not have its default handler (ignored, or the user's)."""
    received = 0

    def handle(signum: int, frame: Any) -> None:
        nonlocal received
        received = received or signum
        signal.signal(signum, STOP_SIGNALS[signum])

    installed = [s for s, default in STOP_SIGNALS.items() if threading.current_thread() is threading.main_thread()
                 and signal.getsignal(s) is default]
    for s in installed:
        signal.signal(s, handle)
    try:
        yield lambda: received
    finally:
        for s in installed:
            signal.signal(s, STOP_SIGNALS[s])
