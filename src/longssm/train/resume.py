"""Whether a run starts, continues or replaces what its directory holds, and the checkpoint it continues from.

Resuming continues a run with the run's own config: ``longssm train --run-dir R --resume auto`` alone continues R
(the command line builds the config on top of the checkpoint's, ``saved_config``). A key given again on resume is
compared with the saved value (``config_changes``):

- keys that fix what the data cursor (the step) and the carried states mean are refused when they change
  (``FIXED``: the model, the tokenizer, ``data.train``, ``train.seq_len``, ``train.batch_size`` /
  ``tokens_per_step``, ``train.seed``, every ``state.*`` key): with another T the windows of step k are other text,
  with another B the streams are cut elsewhere, and the carried states would continue text they never read;
- every other key may change (``train.steps`` no lower than the checkpoint's step, the learning rate and schedule,
  logging, validation, checkpoint cadence, device, dtype, threads, ``model.scan``, ``model.dropout``): the changes
  are listed in one line and recorded in the run's history (``run.json``). The number of processes may change too:
  the streams are re-partitioned.

Everything is read and checked before anything is applied or written: a resume that fails leaves the run as it was.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .. import checkpoint as ckpt_io
from ..config import RunConfig, TrainConfig, to_dict
from ..errors import UserError
from ..runtime.distributed import Shard
from .schedule import reapply_config
from .state import TrainState

FIXED = ("model.", "data.train", "data.tokenizer", "train.seq_len", "train.batch_size", "train.tokens_per_step",
         "train.seed", "state.")
"""Config keys (or key prefixes ending in ".") that a resume may not change."""
FREE_MODEL_KEYS = ("model.scan", "model.dropout")
"""Model keys that change how the model is computed or trained, not what its weights and states mean."""
NOT_COMPARED = ("train.world_size", "train.progress")
"""Keys not compared on resume: the number of processes is re-partitioned, the progress bar is display."""


def check_run_dir(run_dir: Path, resume: str | None, overwrite: bool) -> None:
    """``UserError`` for a run directory that holds a run neither resumed nor overwritten (one that is a file is
    refused by its lock, ``lock.locked_dir``, which ``train`` takes first)."""
    if resume is not None and overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: give one of them")
    held = ckpt_io.holds_run(run_dir)
    if held and resume is None and not overwrite:
        raise UserError(f"--run-dir {run_dir} already holds {held}: continue it with --resume auto or replace it "
                        f"with --overwrite")


def resume_candidates(run_dir: Path, resume: str | None) -> list[Path]:
    """The checkpoints ``resume`` names, best first: none; every ``step-*`` directory, newest first ("auto"); or
    the one given."""
    if resume is None:
        return []
    if resume == "auto":
        return sorted((run_dir / "checkpoints").glob("step-*"), reverse=True)
    return [Path(resume)]


def saved_config(run_dir: Path, resume: str) -> RunConfig | None:
    """The config a resume continues with before any flag is applied: that of the checkpoint ``resume`` names
    (for "auto" the newest one whose config reads, else ``final/``'s, else the run's ``config.yaml``); None when
    the run directory holds no run (a resume of nothing starts the run)."""
    for path in [*resume_candidates(run_dir, resume), run_dir / "final"]:
        try:
            return ckpt_io.read_config(path)
        except UserError:
            if resume != "auto":
                raise
    if (run_dir / "config.yaml").is_file():
        return ckpt_io.read_config(run_dir)
    return None


def read_resume(run_dir: Path, resume: str | None, cfg: RunConfig) -> ckpt_io.TrainingCheckpoint | None:
    """The checkpoint to resume from, read whole and checked against ``cfg`` (None: start at step 0). "auto" skips
    an incomplete or damaged checkpoint, with a warning naming it, for the next older one; ``UserError`` if none is
    usable, and for a finished run whose checkpoints are gone (it is never restarted from step 0)."""
    skipped: list[str] = []
    for path in resume_candidates(run_dir, resume):
        try:
            saved = ckpt_io.read_training_checkpoint(path)
        except UserError as e:
            if resume != "auto":
                raise UserError(f"--resume: {e}") from None
            skipped.append(str(e))
            continue
        check_resumable(saved, cfg)
        for reason in skipped:
            print(f"warning: --resume auto skips a damaged checkpoint: {reason}", file=sys.stderr)
        return saved
    if skipped:
        raise UserError(f"--resume auto: no usable checkpoint in {run_dir / 'checkpoints'} ({'; '.join(skipped)}); "
                        f"start the run over with --overwrite instead of --resume")
    if resume == "auto" and ckpt_io.is_complete(run_dir / "final"):
        raise UserError(f"--resume auto: {run_dir} is a finished run whose checkpoints/ are gone, so its optimizer "
                        f"and carried states are lost: it is not restarted from step 0; start a new run from its "
                        f"weights with --init-from {run_dir} --run-dir NEW")
    if resume == "auto" and ckpt_io.holds_run(run_dir):
        print(f"warning: --resume auto: {run_dir} has no checkpoint yet; the run starts again at step 0",
              file=sys.stderr)
    return None


def config_changes(was: RunConfig, now: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Every dotted config key whose value differs between ``was`` and ``now``: key -> (was, now)."""
    old, new = flat_config(to_dict(was)), flat_config(to_dict(now))
    return {k: (old.get(k), new.get(k)) for k in new if old.get(k) != new[k] and k not in NOT_COMPARED}


def flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys: ``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def is_fixed(key: str) -> bool:
    """Whether ``key`` is one a resume may not change (``FIXED``)."""
    return key not in FREE_MODEL_KEYS and any(key == k or (k.endswith(".") and key.startswith(k)) for k in FIXED)


def check_resumable(saved: ckpt_io.TrainingCheckpoint, cfg: RunConfig) -> None:
    """``UserError`` when ``cfg`` changes a key that fixes what the checkpoint's weights, data cursor or carried
    states mean (each such key named, with both values), or asks for fewer steps than the checkpoint has done."""
    fixed = {k: v for k, v in config_changes(saved.config, cfg).items() if is_fixed(k)}
    if fixed:
        listed = ", ".join(f"{k} is {was!r} there and {now!r} here" for k, (was, now) in fixed.items())
        raise UserError(f"cannot resume from {saved.path}: {listed} (these fix what its step, streams and carried "
                        f"states mean; continue with the run's own values, or start a new run)")
    step = int(saved.trainer.get("step", 0))
    if cfg.train.steps < step:
        raise UserError(f"cannot resume from {saved.path}: train.steps={cfg.train.steps} is below the step it "
                        f"saved ({step}); give train.steps >= {step}")


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """``"train.lr 0.003 → 0.001, train.steps 6 → 12"``."""
    return ", ".join(f"{k} {was} → {now}" for k, (was, now) in changes.items())


def restore(state: TrainState, saved: ckpt_io.TrainingCheckpoint, shard: Shard,
            changes: dict[str, tuple[Any, Any]], tc: TrainConfig) -> None:
    """Load the checkpoint ``saved`` into ``state`` with the optimizer settings of ``tc`` (those a resume may
    change); rank 0 says where it resumed and what changed."""
    state.load_state_dict({"model": saved.weights, "trainer": saved.trainer, "states": saved.states},
                          source=saved.path / "model.safetensors")
    reapply_config(state.optimizer, state.scheduler, tc)
    if shard.is_main:
        print(f"resumed from {saved.path} at step {state.step}{repartitioned(saved.config, shard)}", file=sys.stderr)
        if changes:
            print(f"changed on resume: {describe_changes(changes)}", file=sys.stderr)


def repartitioned(saved: RunConfig, shard: Shard) -> str:
    """A note for the resume message when another number of processes wrote the checkpoint (else "")."""
    was = saved.train.world_size
    return "" if was == shard.world else f" (saved by {was} processes, now {shard.world}: streams re-partitioned)"
