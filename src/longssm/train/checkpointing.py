"""The run directory a training writes: its start (config, source), its checkpoints (saved, pruned) and ``final/``.

Rank 0 alone writes; every process takes part in a save, whose ``TrainState.state_dict`` gathers the carried
states of all B streams (so any number of processes that divides B can resume it).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from .. import checkpoint as ckpt_io
from ..config import RunConfig, to_dict
from ..errors import UserError
from ..files import write_text_atomic
from ..lock import locked_dir
from ..pretrained import Pretrained
from ..runtime.distributed import Shard
from .state import TrainState


@contextmanager
def run_dir_lock(run_dir: Path, shard: Shard) -> Iterator[None]:
    """Hold the run directory's lock for the block (``lock.locked_dir``; it is created if missing and removed again
    if the block fails while it is still empty). Under torchrun rank 0 takes it for the run and every process learns
    whether it got it, so that all stop with one message when another process holds the directory."""
    if shard.world == 1:
        with locked_dir(run_dir, "--run-dir"):
            yield
        return
    with ExitStack() as stack:
        busy: UserError | None = None
        if shard.is_main:
            try:
                stack.enter_context(locked_dir(run_dir, "--run-dir"))
            except UserError as e:
                busy = e
        if shard.any(busy is not None):
            raise busy or UserError(f"--run-dir {run_dir} is in use by another process")
        yield


def prepare_run_dir(run_dir: Path, cfg: RunConfig, overwrite: bool, pretrained: Pretrained | None, step: int,
                    changes: dict[str, tuple[Any, Any]]) -> None:
    """Rank 0, once every input has been checked: delete what the run ``overwrite`` replaces wrote and what
    interrupted checkpoint writes left, then write ``config.yaml``, ``run.json`` (what trainings wrote here, and
    this start, resume or overwrite in the history, with the keys a resume changed) and ``source.json`` for
    ``--init-from``."""
    if overwrite:
        for kept in ckpt_io.clear_run(run_dir)[:5]:
            print(f"warning: --overwrite keeps {kept}: longssm did not write it", file=sys.stderr)
    for partial in ckpt_io.remove_partial(run_dir):
        print(f"warning: removed {partial}, left by an interrupted checkpoint write", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if pretrained is not None:
        write_text_atomic(run_dir / "source.json", json.dumps({"init_from": pretrained.source["path"],
                                                               "format": pretrained.source["format"]}, indent=1))
    record = ckpt_io.read_run_record(run_dir)
    event = "overwrite" if overwrite else "resume" if step > 0 else "start"
    record["written"] = sorted({*record.get("written", []), *WRITTEN, *(["source.json"] if pretrained else [])})
    record.setdefault("history", []).append({
        "event": event, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join(["longssm", *sys.argv[1:]]), "world_size": cfg.train.world_size,
        **({"changed": {k: [was, now] for k, (was, now) in changes.items()}} if changes else {})})
    write_text_atomic(run_dir / ckpt_io.RUN_RECORD, json.dumps(record, indent=1) + "\n")


WRITTEN = ("config.yaml", "metrics.jsonl", "run.json", "checkpoints", "final", "tensorboard", "eval_cache")
"""The run directory entries that a training and the commands run on it (``eval``'s cache) write: ``run.json``'s
``written``."""


class Checkpointer:
    """Saves ``TrainState``s of one run as ``checkpoints/step-XXXXXXXX`` (keeping the newest ``train.keep_last``)
    and its weights as ``final/``."""

    def __init__(self, run_dir: Path, cfg: RunConfig, shard: Shard) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        self.shard = shard

    def save(self, state: TrainState) -> Path:
        """Checkpoint ``state`` at its step (every process calls this); returns the checkpoint's path. The weights
        are written from the module (``save_weights`` stores a tied tensor once): they are ``state_dict()["model"]``."""
        path = self.run_dir / "checkpoints" / f"step-{state.step:08d}"
        sd = state.state_dict()
        if self.shard.is_main:
            ckpt_io.save_checkpoint(path, state.model, self.cfg, state.step, sd["trainer"], sd["states"])
            ckpt_io.prune(self.run_dir, self.cfg.train.keep_last)
        return path

    def save_final(self, state: TrainState) -> None:
        """The last step's checkpoint and ``final/`` (weights and config, no trainer state)."""
        self.save(state)
        if self.shard.is_main:
            ckpt_io.save_checkpoint(self.run_dir / "final", state.model, self.cfg, state.step)
