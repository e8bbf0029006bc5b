"""The run directory a training writes: its start (config, source), its checkpoints (saved, pruned) and ``final/``.

Rank 0 alone writes; every process takes part in a save, whose ``TrainState.state_dict`` gathers the carried
states of all B streams (so any number of processes that divides B can resume it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from .. import checkpoint as ckpt_io
from ..config import RunConfig, to_dict
from ..files import write_text_atomic
from ..pretrained import Pretrained
from ..runtime.distributed import Shard
from .state import TrainState


def prepare_run_dir(run_dir: Path, cfg: RunConfig, overwrite: bool, pretrained: Pretrained | None) -> None:
    """Rank 0, once every input has been checked: delete the run ``overwrite`` replaces and what interrupted
    checkpoint writes left, then write ``config.yaml`` (and ``source.json`` for ``--init-from``)."""
    if overwrite:
        ckpt_io.clear_run(run_dir)
    for partial in ckpt_io.remove_partial(run_dir):
        print(f"warning: removed {partial}, left by an interrupted checkpoint write", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if pretrained is not None:
        (run_dir / "source.json").write_text(json.dumps({"init_from": pretrained.source["path"],
                                                         "format": pretrained.source["format"]}, indent=1))


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
