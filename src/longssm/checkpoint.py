"""Self-describing checkpoint directories, written atomically.

    runs/<name>/
      config.yaml                    resolved run config
      metrics.jsonl                  one JSON record per logged step / validation
      checkpoints/step-00001000/     model.safetensors  weights
                                     states.safetensors every stream's carried state, fitted-noise statistics,
                                                        the scheme's RNG
                                     trainer.pt         optimizer, scheduler, RNG states, step (tensors and plain
                                                        data only: read back with torch.load(weights_only=True))
                                     config.yaml, meta.json (written last: its presence marks a complete checkpoint)
      final/                         the same, after the last step
      source.json                    where the weights came from (runs made by import, calibrate, train --init-from)
      tokenizer.json                 the run's own tokenizer (imported runs), named by data.tokenizer

A checkpoint is written into ``.tmp-*`` beside its final name, fsynced and renamed into place (``files.atomic_dir``),
so an interrupted save never leaves a half-written checkpoint under a name that ``--resume auto`` would pick.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import RunConfig, from_dict, to_dict
from .errors import OperationFailed, UserError, first_line
from .files import OLD_PREFIX, TMP_PREFIX, atomic_dir
from .lock import HOLDER_FILE
from .paths import resolve_path

META = "meta.json"
PARTIAL_PREFIXES = (TMP_PREFIX, OLD_PREFIX)
"""Names of a save in progress: the checkpoint being written, the one it replaces (``save_checkpoint``)."""
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "source.json", "run.json", "checkpoints", "final", "tensorboard",
               "eval_cache")
"""What a training writes into its run directory (``train --overwrite`` deletes these)."""


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """``model.state_dict()`` to safetensors; a tied tensor is stored once and its other names kept as metadata."""
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, t in _unwrap(model).state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().cpu().contiguous()
    save_file(tensors, str(path), metadata={"tied": json.dumps(tied), "format": "longssm"})


def read_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The state dict ``save_weights`` wrote, every tied name included; ``UserError`` naming ``path`` when the
    file is missing, truncated or not safetensors."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tied = json.loads((f.metadata() or {}).get("tied", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (OSError, SafetensorError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read weights {path}: {first_line(e)} (truncated or corrupted file?)") from None
    for alias, source in tied.items():
        tensors[alias] = tensors[source]
    return tensors


def load_weights(model: torch.nn.Module, path: str | Path, device: str | torch.device = "cpu") -> None:
    """Inverse of ``save_weights``: every name the model expects must be present (strict)."""
    apply_weights(model, read_weights(path, device), path)


def apply_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load ``tensors`` (read from ``path``) into ``model``, strictly; ``UserError`` naming ``path`` if they do not
    fit."""
    try:
        _unwrap(model).load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"weights in {path} do not fit the model: {first_line(e)} ...") from None


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    config: RunConfig,
    step: int,
    trainer: dict[str, Any] | None = None,
    states: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (``files.atomic_dir``: a temporary directory, fsynced, renamed over
    ``path``). Returns ``path``.

    ``meta.json`` (written last) lists the files, so a checkpoint that lost one is not complete (``is_complete``).
    A write that fails (a full disk, ...) or is interrupted removes its temporary directory: an ``OSError`` naming
    ``path`` and carrying the failure's errno (``errors.OperationFailed``: ``cannot write checkpoint PATH: no space
    left on device``), or the ``KeyboardInterrupt``, propagates and whatever was at ``path`` before is untouched."""
    path = Path(path)
    try:
        with atomic_dir(path, replace=True) as tmp:
            save_weights(model, tmp / "model.safetensors")
            if states:
                save_file(states, str(tmp / "states.safetensors"))
            if trainer is not None:  # through a buffer: torch.save's own writes lose the errno of a failure
                buffer = io.BytesIO()
                torch.save(trainer, buffer)
                (tmp / "trainer.pt").write_bytes(buffer.getbuffer())
                del buffer
            (tmp / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
            files = sorted(f.name for f in tmp.iterdir())
            meta = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "format": 1, "files": files}
            (tmp / META).write_text(json.dumps(meta))
    except OSError as e:
        raise OperationFailed(f"cannot write checkpoint {path}", e) from e
    except SafetensorError as e:  # "... I/O error: No space left on device (os error 28)"
        raise OperationFailed(f"cannot write checkpoint {path}", _safetensors_os_error(e)) from e
    return path


def _safetensors_os_error(e: SafetensorError) -> OSError:
    """The ``OSError`` (with its errno, when the message names one: ``(os error 28)``) of a failed safetensors
    write."""
    found = re.search(r"\(os error (\d+)\)", str(e))
    if found is None:
        return OSError(first_line(e))
    code = int(found[1])
    return OSError(code, os.strerror(code))


def save_run(path: str | Path, model: torch.nn.Module, config: RunConfig, source: dict[str, Any]) -> Path:
    """Write a new run directory that holds one checkpoint, ``final/`` (weights and config, no trainer state), and
    ``source.json`` (where its weights came from), atomically
    (``files.atomic_dir``; an existing ``path`` is refused). A tokenizer file
    (``data.tokenizer`` not byte or gpt2) is copied into the run as ``tokenizer.json``, and ``data.tokenizer`` names
    that copy (an absolute path). Returns ``path``."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        if config.data.tokenizer not in ("byte", "gpt2"):
            shutil.copyfile(resolve_path(config.data.tokenizer), tmp / "tokenizer.json")
            config = replace(config, data=replace(config.data, tokenizer=str(path.resolve() / "tokenizer.json")))
        (tmp / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        (tmp / "source.json").write_text(json.dumps(source, indent=1))
        save_checkpoint(tmp / "final", model, config, step=0)
    return path


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)


def incomplete(path: Path) -> str | None:
    """Why ``path`` is not a published checkpoint directory with its ``meta.json`` and every file that lists (its
    weights at least), or None when it is one. Cheap: the files are not read (``read_training_checkpoint`` is)."""
    if not path.is_dir() or path.name.startswith("."):
        return "not a checkpoint directory"
    try:
        files = json.loads((path / META).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):  # missing, unreadable or not a JSON object
        return f"no readable {META}"
    missing = [name for name in ["model.safetensors", *files] if not (path / name).is_file()]
    return f"{missing[0]} is missing" if missing else None


def is_complete(path: Path) -> bool:
    """``path`` is a complete checkpoint directory (see ``incomplete``)."""
    return incomplete(path) is None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete ``step-*`` checkpoints of a run, oldest first."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob("step-*") if is_complete(p))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune(run_dir: Path, keep_last: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (→ its ``final/``, else its newest checkpoint) or a checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such run or checkpoint: {path}")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a run or checkpoint directory")
    foreign = foreign_checkpoint(path)
    if foreign is not None:
        raise UserError(f"{path} is {foreign} checkpoint directory, not a longssm run: convert it with "
                        f"`longssm import {path} --out RUN`")
    for ckpt in (path, path / "final"):
        if (ckpt / META).exists() or (ckpt / "model.safetensors").exists():  # a checkpoint, complete or damaged
            problem = incomplete(ckpt)
            if problem is not None:
                raise UserError(f"checkpoint {ckpt} is incomplete: {problem}")
            return ckpt
    latest = latest_checkpoint(path)
    if latest is None:
        raise UserError(f"{path} holds no complete checkpoint (expected final/ or checkpoints/step-*/ with {META})")
    return latest


def foreign_checkpoint(path: Path) -> str | None:
    """"a Hugging Face" or "a mamba_ssm" when ``path`` is that program's checkpoint directory (a ``config.json``
    with ``model_type``, or with ``d_model`` and ``n_layer``, and no ``meta.json``: what ``pretrained.py`` reads),
    else None."""
    if (path / META).exists():
        return None
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    if "model_type" in raw:
        return "a Hugging Face"
    return "a mamba_ssm" if "d_model" in raw and "n_layer" in raw else None


def read_config(ckpt: Path) -> RunConfig:
    """The checkpoint's ``config.yaml``; ``UserError`` naming it when it is missing, unreadable or not a config."""
    path = ckpt / "config.yaml"
    try:
        return from_dict(RunConfig, yaml.safe_load(path.read_text()))
    except FileNotFoundError:
        raise UserError(f"checkpoint {ckpt} has no config.yaml") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, UserError) as e:
        raise UserError(f"cannot read {path}: {first_line(e)}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, RunConfig, Path]:
    """Build the model of a run/checkpoint and load its weights.

    Returns (model in eval mode, config, checkpoint dir)."""
    from .models import build_model

    ckpt = resolve_checkpoint(path)
    config = read_config(ckpt)
    model = build_model(config.model, device=device)
    load_weights(model, ckpt / "model.safetensors")
    return model.eval(), config, ckpt


def load_trainer(ckpt: Path) -> dict[str, Any]:
    """``trainer.pt`` (tensors and plain data, so ``weights_only=True``); ``UserError`` naming it when it is missing
    or unreadable."""
    path = ckpt / "trainer.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # its message suggests weights_only=False: never for a file we cannot trust
        raise UserError(f"cannot read {path}: damaged, or holds more than tensors and plain data") from None
    except Exception as e:  # a truncated file fails inside torch.load with several exception types
        raise UserError(f"cannot read {path}: {first_line(e)}") from None


def load_states(ckpt: Path) -> dict[str, torch.Tensor]:
    """``states.safetensors`` (``{}`` when the checkpoint has none); ``UserError`` naming it when it is unreadable."""
    path = ckpt / "states.safetensors"
    return read_tensors(path) if path.is_file() else {}


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file as a dict of tensors; ``UserError`` naming it when it is unreadable."""
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise UserError(f"cannot read {path}: {first_line(e)}") from None


@dataclass
class TrainingCheckpoint:
    """Everything ``--resume`` restores, read from disk and checked before any of it is applied."""

    path: Path
    config: RunConfig
    weights: dict[str, torch.Tensor]
    trainer: dict[str, Any]
    """Optimizer, scheduler, scaler, RNG states, step (as ``train`` saves them)."""
    states: dict[str, torch.Tensor]
    """The state schemes' ``state_dict`` (carried states, fitted statistics, RNG)."""


def read_training_checkpoint(ckpt: Path) -> TrainingCheckpoint:
    """Read every file of a ``step-*`` checkpoint; ``UserError`` naming the first one missing or damaged."""
    problem = incomplete(ckpt)
    if problem is not None:
        raise UserError(f"{ckpt} is not a complete checkpoint: {problem}")
    for name in ("trainer.pt", "states.safetensors"):
        if not (ckpt / name).is_file():
            raise UserError(f"{ckpt} has no {name}: it holds weights only and cannot be resumed")
    trainer = load_trainer(ckpt)
    if not isinstance(trainer, dict) or "step" not in trainer:
        raise UserError(f"{ckpt / 'trainer.pt'} is not a longssm trainer state")
    return TrainingCheckpoint(ckpt, read_config(ckpt), read_weights(ckpt / "model.safetensors"), trainer,
                              load_states(ckpt))


def holds_run(run_dir: Path) -> str | None:
    """What marks ``run_dir`` as holding a run ("a finished run", "a run"), or None."""
    if is_complete(run_dir / "final"):
        return "a finished run"
    if any((run_dir / name).exists() for name in RUN_ENTRIES):
        return "a run"
    return None


CHECKPOINT_FILES = ("model.safetensors", "states.safetensors", "trainer.pt", "config.yaml", META)
"""The files ``save_checkpoint`` writes into a checkpoint directory."""
RUN_RECORD = "run.json"
"""A run's metadata: what its trainings wrote (``written``) and its history (start, resumes, what they changed)."""


def clear_run(run_dir: Path) -> list[Path]:
    """Delete what trainings wrote into ``run_dir`` (``train --overwrite``) and return what stays: the entries
    ``run.json`` lists as written (``RUN_ENTRIES`` for a run without one), and inside ``checkpoints/``, ``final/``,
    ``tensorboard/`` and ``eval_cache/`` only the files longssm writes there (checkpoint directories and their
    files, TensorBoard event files, cache entries). Any other file stays, and so does the directory holding it (the
    lock's holder file stays too, unlisted: it is longssm's, and in use)."""
    written = read_run_record(run_dir).get("written", RUN_ENTRIES)
    for name in (n for n in RUN_ENTRIES if n in written):
        entry = run_dir / name
        if entry.is_file() or entry.is_symlink():
            entry.unlink()
        elif entry.is_dir():
            _clear_ours(entry, name)
    return sorted(p for p in run_dir.rglob("*") if p.is_file() and p.name not in (RUN_RECORD, HOLDER_FILE))


def _clear_ours(entry: Path, name: str) -> None:
    """Delete longssm's own files under the run entry ``entry`` (``checkpoints``, ``final``, ...), then every
    directory left empty (``entry`` included)."""
    if name == "checkpoints":
        for ckpt in [*entry.glob("step-*"), *(p for p in entry.iterdir() if p.name.startswith(PARTIAL_PREFIXES))]:
            if ckpt.is_dir():
                _clear_ours(ckpt, "final")
    elif name == "final":
        for f in CHECKPOINT_FILES:
            (entry / f).unlink(missing_ok=True)
    elif name == "tensorboard":
        for f in entry.glob("events.out.tfevents.*"):
            f.unlink()
    elif name == "eval_cache":
        for f in entry.glob("*/L*-*.json"):
            f.unlink()
    for d in sorted((p for p in entry.rglob("*") if p.is_dir()), reverse=True) + [entry]:
        with contextlib.suppress(OSError):
            d.rmdir()


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of a run directory ({} when it has none or it is unreadable)."""
    try:
        record = json.loads((Path(run_dir) / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def remove_partial(run_dir: Path) -> list[Path]:
    """Delete the temporary directories that killed saves left in ``run_dir`` and its ``checkpoints/``; returns
    them. (A live save of the same run in another process would lose its temporary directory: do not train two
    processes into one run directory.)"""
    found = [p for d in (run_dir, run_dir / "checkpoints") if d.is_dir() for p in sorted(d.iterdir())
             if p.is_dir() and p.name.startswith(PARTIAL_PREFIXES)]
    for p in found:
        shutil.rmtree(p, ignore_errors=True)
    return found

