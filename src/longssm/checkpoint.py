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

A checkpoint is written into ``.tmp-*`` beside its final name and renamed into place, so an interrupted save
never leaves a half-written checkpoint under a name that ``--resume auto`` would pick.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import RunConfig, from_dict, to_dict
from .data.paths import resolve_path
from .errors import UserError

META = "meta.json"


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
    """The state dict ``save_weights`` wrote, every tied name included."""
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        tied = json.loads((f.metadata() or {}).get("tied", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for alias, source in tied.items():
        tensors[alias] = tensors[source]
    return tensors


def load_weights(model: torch.nn.Module, path: str | Path, device: str | torch.device = "cpu") -> None:
    """Inverse of ``save_weights``: every name the model expects must be present (strict)."""
    tensors = read_weights(path, device)
    try:
        _unwrap(model).load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UserError(f"weights in {path} do not fit the model: {str(e).splitlines()[0]} ...") from None


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    config: RunConfig,
    step: int,
    trainer: dict[str, Any] | None = None,
    states: dict[str, torch.Tensor] | None = None,
    before_rename=None,
) -> Path:
    """Write a checkpoint directory atomically (temporary directory, then rename). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_weights(model, tmp / "model.safetensors")
    if states:
        save_file(states, str(tmp / "states.safetensors"))
    if trainer is not None:
        torch.save(trainer, tmp / "trainer.pt")
    (tmp / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    (tmp / META).write_text(json.dumps({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "format": 1}))
    if before_rename is not None:  # test hook: simulate a crash between writing and publishing
        before_rename(tmp)
    old = None
    if path.exists():
        old = path.parent / f".old-{path.name}-{os.getpid()}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


@contextmanager
def new_directory(path: str | Path) -> Iterator[Path]:
    """Write a new directory atomically: yields a ``.tmp-*`` directory beside ``path``, renamed to ``path`` when the
    block succeeds and deleted when it raises, so a failed command leaves nothing under ``path``. ``UserError`` if
    ``path`` exists (nothing is overwritten)."""
    path = Path(path)
    if path.exists():
        raise UserError(f"{path} exists; choose a new output directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_run(path: str | Path, model: torch.nn.Module, config: RunConfig, source: dict[str, Any]) -> Path:
    """Write a new run directory that holds one checkpoint, ``final/`` (weights and config, no trainer state), and
    ``source.json`` (where its weights came from), atomically (``new_directory``). A tokenizer file
    (``data.tokenizer`` not byte or gpt2) is copied into the run as ``tokenizer.json``, and ``data.tokenizer`` names
    that copy (an absolute path). Returns ``path``."""
    path = Path(path)
    with new_directory(path) as tmp:
        if config.data.tokenizer not in ("byte", "gpt2"):
            shutil.copyfile(resolve_path(config.data.tokenizer), tmp / "tokenizer.json")
            config = replace(config, data=replace(config.data, tokenizer=str(path.resolve() / "tokenizer.json")))
        (tmp / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        (tmp / "source.json").write_text(json.dumps(source, indent=1))
        save_checkpoint(tmp / "final", model, config, step=0)
    return path


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)


def is_complete(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and (path / META).is_file() and (path / "model.safetensors").is_file()


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
    if is_complete(path):
        return path
    if is_complete(path / "final"):
        return path / "final"
    latest = latest_checkpoint(path)
    if latest is None:
        raise UserError(f"{path} holds no complete checkpoint (expected final/ or checkpoints/step-*/ with {META})")
    return latest


def read_config(ckpt: Path) -> RunConfig:
    try:
        return from_dict(RunConfig, yaml.safe_load((ckpt / "config.yaml").read_text()))
    except FileNotFoundError:
        raise UserError(f"checkpoint {ckpt} has no config.yaml") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, RunConfig, Path]:
    """Build the model of a run/checkpoint and load its weights. Returns (model in eval mode, config, checkpoint dir)."""
    from .models import build_model

    ckpt = resolve_checkpoint(path)
    config = read_config(ckpt)
    model = build_model(config.model)
    load_weights(model, ckpt / "model.safetensors")
    return model.to(device).eval(), config, ckpt


def load_trainer(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=True)


def load_states(ckpt: Path) -> dict[str, torch.Tensor]:
    f = ckpt / "states.safetensors"
    return load_file(str(f)) if f.is_file() else {}
