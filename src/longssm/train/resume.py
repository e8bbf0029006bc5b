"""Whether a run starts, continues or replaces what its directory holds, and the checkpoint it continues from.

Everything is read and checked before anything is applied or written: a resume that fails leaves the run as it was.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .. import checkpoint as ckpt_io
from ..config import RunConfig, to_dict
from ..errors import UserError
from ..runtime.distributed import Shard
from .state import TrainState


def check_run_dir(run_dir: Path, resume: str | None, overwrite: bool) -> None:
    """``UserError`` for a run directory that is a file, or that holds a run neither resumed nor overwritten."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file, not a directory")
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


def read_resume(run_dir: Path, resume: str | None, cfg: RunConfig) -> ckpt_io.TrainingCheckpoint | None:
    """The checkpoint to resume from, read whole and checked against ``cfg`` (None: start at step 0). "auto" skips
    an incomplete or damaged checkpoint, with a warning naming it, for the next older one; ``UserError`` if none is
    usable."""
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
    return None


def check_resumable(saved: ckpt_io.TrainingCheckpoint, cfg: RunConfig) -> None:
    """``UserError`` when ``cfg`` changed what the checkpoint's weights or carried states depend on."""
    was, now = to_dict(saved.config.model), to_dict(cfg.model)
    changed = [k for k in now if was.get(k) != now[k]]
    if changed:
        raise UserError(f"cannot resume from {saved.path}: model.{changed[0]} is {was.get(changed[0])!r} there and "
                        f"{now[changed[0]]!r} here")
    if saved.config.train.batch_size != cfg.train.batch_size:
        raise UserError(f"cannot resume from {saved.path} with train.batch_size={cfg.train.batch_size}: its carried "
                        f"states belong to {saved.config.train.batch_size} streams")


def restore(state: TrainState, saved: ckpt_io.TrainingCheckpoint, shard: Shard) -> None:
    """Load the checkpoint ``saved`` into ``state``; rank 0 says where it resumed."""
    state.load_state_dict({"model": saved.weights, "trainer": saved.trainer, "states": saved.states},
                          source=saved.path / "model.safetensors")
    if shard.is_main:
        print(f"resumed from {saved.path} at step {state.step}{repartitioned(saved.config, shard)}", file=sys.stderr)


def repartitioned(saved: RunConfig, shard: Shard) -> str:
    """A note for the resume message when another number of processes wrote the checkpoint (else "")."""
    was = saved.train.world_size
    return "" if was == shard.world else f" (saved by {was} processes, now {shard.world}: streams re-partitioned)"
