"""The training loop: stateful truncated BPTT over B contiguous streams, read top to bottom.

    for step k:
        x, y        = window k of every stream                        (data/streams.py)
        s_k         = scheme's initial state for window k              (schemes.py: zero, previous, noise, ...)
        logits, s'  = model(x, s_k)                                    (gradients stop at s_k: it is detached)
        loss        = cross-entropy(logits, y); clip; AdamW step; warmup + cosine schedule   (step.py, schedule.py)
        scheme.observe(s')                                             (carried to window k+1 / fitted stats)

Everything a resume needs — weights, optimizer, scheduler, loss scaler, the step (= data cursor), every stream's
carried state, fitted-noise statistics and every RNG — is the ``TrainState`` (state.py) that a checkpoint holds,
so a resumed run continues bit-identically.

No host syncs between log steps: a step reads nothing back from the device (step.py says how, float16's loss
scaling included); the host reads the steps' losses and finite flags in one transfer at every log step, checkpoint
and the last step, and stops a run of non-finite steps there (guard.py). (The ``on_step`` hook reads every loss.)

Several processes (``torchrun``, see ``runtime/distributed.py``): each runs the loop above on its own streams of
the global batch (``shard.streams``) with the model in ``DistributedDataParallel``; ``finite``, the loss and a
Ctrl-C are agreed by all processes each step (``shard.agree``, ``shard.any``), so all take the same steps and stop
together. ``train.grad_accum`` splits a process's streams into micro-batches (``step.forward_backward``). Rank 0
alone writes the run directory; a checkpoint holds the carried states of all B streams, so any number of processes
that divides B can resume it.
"""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Callable, Collection
from contextlib import closing
from pathlib import Path
from typing import Any

from ..checkpoint import is_complete
from ..config import RunConfig
from .checkpointing import Checkpointer, prepare_run_dir, run_dir_lock
from .guard import NonFiniteGuard
from .metrics import LogWindow, MetricsLog, last_logged_loss, progress_bar
from .resume import restore
from .setup import Run, prepare, start_processes, step_context
from .signals import Stopped, deferred_stop_signals
from .step import train_step
from .validation import PeriodicValidation


def train(
    cfg: RunConfig, run_dir: str | Path, resume: str | None = None, on_step: Callable[[int, float], None] | None = None,
    init_from: str | Path | None = None, overwrite: bool = False, given: Collection[str] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``. ``resume``: None, "auto" (newest complete checkpoint, if any) or a path.

    One process writes a run directory at a time: ``run_dir`` is locked (``lock.py``) from the first check to the
    last write, and a second ``train`` into it fails at once naming the process that holds it. A ``run_dir`` that
    already holds a run is refused unless ``resume`` is given (continue it) or ``overwrite`` is (delete what
    trainings wrote there, ``checkpoint.clear_run``, once every input has been checked; other files stay). "auto"
    skips a damaged newest checkpoint with a warning and resumes from the next older one; a finished run whose
    checkpoints are gone is refused, not restarted; a finished run resumed at its last step is left as it is.
    A resume may change only the keys ``resume.py`` allows (the changes are printed and recorded in ``run.json``).

    Ctrl-C (SIGINT) or SIGTERM (main thread; in any process of a torchrun run) lets the step in flight finish in
    every process, saves a checkpoint of it and raises ``Stopped`` (a ``KeyboardInterrupt`` whose message names the
    checkpoint); a second signal stops at once.

    ``init_from`` (a run, checkpoint, Hugging Face or mamba_ssm directory, see ``pretrained.read_pretrained``) starts
    a new run from those weights with a new optimizer and schedule: its model config and tokenizer replace ``cfg``'s
    and ``<run_dir>/source.json`` records it; ``given`` (the config keys the user set) says which model keys must
    agree with the source's (``setup.read_init_from``). Returns a summary dict.

    ``on_step(step, loss)`` is a hook for tests (e.g. to interrupt a run); it reads the loss of every step back
    from the device (the loss of a skipped step is the non-finite value itself).
    """
    run_dir = Path(run_dir)
    shard, device = start_processes(cfg)
    with run_dir_lock(run_dir, shard):  # one writer per run directory, from its first check to its last write
        run = prepare(cfg, run_dir, resume, init_from, overwrite, shard, device, given)  # nothing written yet
        if run.saved is not None and run.saved.trainer.get("step") == run.cfg.train.steps and is_complete(
                run_dir / "final"):
            return finished(run, run_dir)
        return train_loop(run, run_dir, overwrite, on_step)


def finished(run: Run, run_dir: Path) -> dict[str, Any]:
    """The summary of a finished run resumed at its last step: nothing to do, nothing written."""
    if run.shard.is_main:
        print(f"{run_dir} is finished at step {run.cfg.train.steps}; raise --train.steps to train on", file=sys.stderr)
    return summary(run_dir, run.cfg, run.cfg.train.steps)


def summary(run_dir: Path, cfg: RunConfig, steps: int) -> dict[str, Any]:
    """What ``train`` returns and the command line prints: ``final_loss`` is the loss of the last record of
    ``metrics.jsonl`` (the mean over its log window), the same number the file holds."""
    return {"run_dir": str(run_dir), "steps": steps, "final_loss": last_logged_loss(run_dir),
            "batch_size": cfg.train.batch_size}


def train_loop(run: Run, run_dir: Path, overwrite: bool, on_step: Callable[[int, float], None] | None
               ) -> dict[str, Any]:
    """The loop above, from the prepared ``run`` (resumed when it holds a checkpoint) to ``final/``."""
    cfg, tc, shard, state = run.cfg, run.cfg.train, run.shard, run.state
    if run.saved is not None:
        restore(state, run.saved, shard, run.changes, tc)
    ctx = step_context(run)  # every process has checked its inputs before rank 0 writes below
    if shard.is_main:
        prepare_run_dir(run_dir, cfg, overwrite, run.pretrained, state.step, run.changes)
    log, checkpoints = MetricsLog(run_dir, state.step, enabled=shard.is_main), Checkpointer(run_dir, cfg, shard)
    validate = PeriodicValidation(run.valid, tc, run.device, shard)
    bar = progress_bar(cfg, state.step, shard)
    note = bar.write if shard.is_main else lambda message: None
    guard, window = NonFiniteGuard(tc.max_bad_steps, log, note, run_dir), LogWindow(tc.batch_size * tc.seq_len)
    state.model.train()
    with deferred_stop_signals() as stop_signal, bar, closing(log):
        while state.step < tc.steps:
            metrics = train_step(state, run.loader.batch(state.step, run.streams), ctx)
            guard.record(metrics)
            window.steps += 1
            done = state.step
            if on_step is not None:
                on_step(done, metrics.loss.item())

            stop = shard.any(bool(stop_signal())) and done < tc.steps  # a signal in this step: save, stop
            log_due = done % tc.log_every == 0 or done == tc.steps
            periodic = tc.checkpoint_every > 0 and done % tc.checkpoint_every == 0
            checkpoint_due = (periodic or stop) and done < tc.steps
            if log_due or checkpoint_due:  # the only place where the host waits for the device
                window.losses += guard.read_back(state)
            if log_due:
                record = window.record(done, state.scheduler.get_last_lr()[0], metrics.final, shard)
                log.write(record)
                loss = math.nan if record["loss"] is None else record["loss"]
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}")
            if validate.due(done) and not stop:
                val = validate(state.model)
                log.write({"step": done, "val_ppl_at_T": val})
                note(f"step {done}: validation ppl @ T={tc.seq_len}: {val:.3f}")
            if checkpoint_due:
                ckpt = checkpoints.save(state)
            if stop:
                raise Stopped(f"saved {ckpt}; continue with --resume auto", stop_signal() or signal.SIGTERM)
            bar.update(1)
    checkpoints.save_final(state)
    return summary(run_dir, cfg, state.step)
