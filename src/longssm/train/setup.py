"""Everything a training run is built from, checked before anything is written: the resolved config, the data,
the device, and a new ``TrainState`` (model, optimizer, schedule, scaler, state schemes)."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint as ckpt_io
from ..config import RunConfig, to_dict
from ..data.corpus import load_corpus
from ..data.streams import StreamLoader
from ..data.task_stream import PREFIX as SYNTHETIC_PREFIX
from ..data.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from ..errors import UserError
from ..models import build_model
from ..models.registry import get_family
from ..paths import BUILTIN_PREFIX, resolve_path
from ..pretrained import Pretrained, read_pretrained
from ..runtime import distributed
from ..runtime.device import autocast_for, resolve_device
from .resume import FREE_MODEL_KEYS, check_run_dir, config_changes, flat_config, read_resume, resume_candidates
from .schedule import optimizer_and_schedule
from .schemes import StateSchemes
from .state import TrainState
from .step import StepContext


@dataclass(frozen=True)
class Run:
    """A training run as ``prepare`` set it up; nothing of it has been written yet."""

    cfg: RunConfig
    """Resolved (``resolve_config``): what the run directory's config.yaml holds."""
    shard: distributed.Shard
    device: torch.device
    autocast: torch.autocast
    loader: StreamLoader
    """Every window of the B training streams."""
    streams: slice
    """This process's streams: their rows of each batch."""
    valid: np.ndarray | None
    """Validation tokens (None without ``train.eval_every``)."""
    pretrained: Pretrained | None
    """What ``--init-from`` read."""
    saved: ckpt_io.TrainingCheckpoint | None
    """The checkpoint to resume from, read and checked (not applied yet)."""
    changes: dict[str, tuple[Any, Any]]
    """Config keys a resume changes: key -> (saved value, new value); {} for a new run."""
    state: TrainState
    """A new state at step 0 (seeded by ``train.seed``; with the ``--init-from`` weights)."""


def start_processes(cfg: RunConfig) -> tuple[distributed.Shard, torch.device]:
    """The CPU threads of ``train.threads``, the process group under torchrun, and this process's device."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    return distributed.init(resolve_device(cfg.train.device))


def prepare(cfg: RunConfig, run_dir: Path, resume: str | None, init_from: str | Path | None, overwrite: bool,
            shard: distributed.Shard, device: torch.device, given: Collection[str] | None = None) -> Run:
    """Check the run directory and every input, resolve the config, read the data and the checkpoint to resume
    from, and build a new ``TrainState``, in that order: what fails first is reported and nothing is written.
    ``given``: the config keys the user set (see ``read_init_from``)."""
    check_run_dir(run_dir, resume, overwrite)
    cfg, pretrained = read_init_from(cfg, run_dir, resume, init_from, given)
    autocast = autocast_for(device, cfg.train.dtype)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    cfg = resolve_config(cfg, tokenizer, shard.world, checked=False)
    saved = read_resume(run_dir, resume, cfg)  # a resume that changes a fixed key fails here, before the rest
    check_vocabulary(cfg, tokenizer)
    warn_about(cfg)
    loader, valid, digest = load_data(cfg, tokenizer)
    check_same_data(saved, cfg, digest)
    changes = {} if saved is None else config_changes(saved.config, cfg)
    state = new_train_state(cfg, device, shard, pretrained)
    state.data_digest = digest
    return Run(cfg, shard, device, autocast, loader, shard.streams(cfg.train.batch_size), valid, pretrained, saved,
               changes, state)


def warn_about(cfg: RunConfig) -> None:
    """Warnings (stderr, rank 0) for a config that is valid but probably not what was meant."""
    tc = cfg.train
    if tc.warmup_steps > tc.steps and os.environ.get("RANK", "0") == "0":
        print(f"warning: train.warmup_steps={tc.warmup_steps} is longer than the run (train.steps={tc.steps}): the "
              f"learning rate never reaches train.lr", file=sys.stderr)


def check_config(cfg: RunConfig) -> RunConfig:
    """What ``--print-config`` prints: ``cfg`` resolved as the run's config.yaml would hold it, after the checks
    that need no data to be read (the model family, the tokenizer and its vocabulary, the data files exist)."""
    from ..models.registry import get_family

    get_family(cfg.model.family)
    cfg = resolve_config(cfg, load_tokenizer(cfg.data.tokenizer), cfg.train.world_size)
    for key, spec in (("data.train", cfg.data.train), ("data.valid", cfg.data.valid if cfg.train.eval_every else None)):
        if spec is not None and not resolve_path(spec).is_file():
            raise UserError(f"{key} {spec} is not a file")
    return cfg


def read_init_from(cfg: RunConfig, run_dir: Path, resume: str | None, init_from: str | Path | None,
                   given: Collection[str] | None = None) -> tuple[RunConfig, Pretrained | None]:
    """``cfg`` with the model config and tokenizer of the ``--init-from`` directory, and what was read there
    (``cfg`` and None without ``init_from``).

    ``given``: the dotted config keys the user set (the command line passes its flags and ``--config`` keys; None,
    from Python: none, ``cfg.model`` is replaced whole). A given model key (other than ``model.scan``,
    ``model.dropout``, which apply) or ``data.tokenizer`` that the source does not have is a ``UserError``, never
    ignored; so is a source without a tokenizer whose vocabulary is not the byte tokenizer's, unless a tokenizer is
    given (from Python: ``cfg.data.tokenizer``)."""
    if init_from is None:
        return cfg, None
    if resume_candidates(run_dir, resume):
        raise UserError(f"--init-from starts a new run, but {run_dir} has a checkpoint to resume: drop one of them")
    pretrained = read_pretrained(init_from)
    library_call, given = given is None, given or ()
    wanted = {k: v for k, v in flat_config(to_dict(cfg)).items() if k in given}
    source = flat_config({"model": to_dict(pretrained.model)})
    model = replace(pretrained.model, **{k[6:]: wanted[k] for k in FREE_MODEL_KEYS if k in wanted})
    clash = [k for k in wanted if k.startswith("model.") and k not in FREE_MODEL_KEYS and wanted[k] != source.get(k)]
    if clash:
        listed = ", ".join(f"{k}={source.get(k)!r} (given {wanted[k]!r})" for k in clash)
        raise UserError(f"--init-from {init_from} has {listed}: its weights fix the model, drop these flags (or train "
                        f"a new model without --init-from)")
    if library_call:  # from Python: cfg's tokenizer serves a source that has none
        wanted["data.tokenizer"] = None if pretrained.tokenizer else cfg.data.tokenizer
    tokenizer = _init_tokenizer(pretrained, init_from, wanted.get("data.tokenizer"))
    return replace(cfg, model=model, data=replace(cfg.data, tokenizer=tokenizer)), pretrained


BYTE_PADDING = 64
"""A source without a tokenizer is read with the byte tokenizer when its vocabulary is 256 padded by at most this."""


def _init_tokenizer(pretrained: Pretrained, init_from: str | Path, given: str | None) -> str:
    """The tokenizer of an ``--init-from`` run: the source's, the given one when the source has none, or byte for a
    source without one whose vocabulary is the byte vocabulary; ``UserError`` otherwise."""
    if pretrained.tokenizer is not None and given is not None and given != pretrained.tokenizer:
        raise UserError(f"--init-from {init_from} was trained with tokenizer {pretrained.tokenizer}; data.tokenizer "
                        f"{given} cannot replace it (drop --data.tokenizer)")
    if pretrained.tokenizer is not None or given is not None:
        return pretrained.tokenizer or str(given)
    vocab = pretrained.model.vocab_size
    if vocab is not None and vocab > ByteTokenizer.vocab_size + BYTE_PADDING:
        raise UserError(f"--init-from {init_from} has no tokenizer.json and a vocabulary of {vocab}, not the byte "
                        f"tokenizer's {ByteTokenizer.vocab_size}: name its tokenizer with --data.tokenizer (gpt2 or a "
                        f"tokenizer.json path)")
    return "byte"


def resolve_config(cfg: RunConfig, tokenizer: Tokenizer, world_size: int = 1, checked: bool = True
                   ) -> RunConfig:
    """Fill derived fields: the vocabulary size from the tokenizer, the batch size from the token budget, the
    number of processes, and absolute data, tokenizer and cache paths (so the run's config.yaml works from any
    directory). ``checked``: also ``check_vocabulary`` (``prepare`` calls it itself, after the resume check)."""
    model = cfg.model
    if model.vocab_size is None:
        model = replace(model, vocab_size=tokenizer.vocab_size)
    train = replace(cfg.train, batch_size=cfg.train.resolved_batch_size, world_size=world_size)
    d = cfg.data
    cache_dir = None if d.cache_dir is None else _absolute(d.cache_dir)  # None: the user's cache directory
    data = replace(d, train=_absolute(d.train), valid=_absolute(d.valid), cache_dir=cache_dir,
                   tokenizer=d.tokenizer if d.tokenizer in ("byte", "gpt2") else _absolute(d.tokenizer))
    cfg = replace(cfg, model=model, train=train, data=data)
    check_scheme_fits_the_layers(cfg)
    if checked:
        check_vocabulary(cfg, tokenizer)
    return cfg


NOISE_SCHEMES = ("random_noise", "fitted_noise")


def check_scheme_fits_the_layers(cfg: RunConfig) -> None:
    """``UserError`` for a noise scheme on a model with a layer whose state is not a quantity noise can stand for:
    a block class with ``noise_states = False`` (sliding-window attention: a cache of real tokens and its slot
    flags)."""
    if cfg.state.scheme not in NOISE_SCHEMES:
        return
    for name in dict.fromkeys(cfg.model.layers or [cfg.model.family]):
        if getattr(get_family(name).block, "noise_states", True) is False:
            raise UserError(f"state.scheme {cfg.state.scheme} adds noise to every carried state, and a {name} layer's "
                            "state is a cache of real tokens: use zero, previous or state_passing")


def check_vocabulary(cfg: RunConfig, tokenizer: Tokenizer) -> None:
    """``UserError`` when the model's vocabulary cannot embed every token of the tokenizer."""
    if cfg.model.vocab_size is not None and cfg.model.vocab_size < tokenizer.vocab_size:
        raise UserError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                        f"{tokenizer.vocab_size}")


def _absolute(spec: str) -> str:
    """A path made absolute against the working directory; ``builtin:`` paths and task streams stay as they are."""
    return spec if spec.startswith((BUILTIN_PREFIX, SYNTHETIC_PREFIX)) else str(resolve_path(spec).absolute())


def check_same_data(saved: ckpt_io.TrainingCheckpoint | None, cfg: RunConfig, digest: str) -> None:
    """``UserError`` when the checkpoint to resume was trained on other data than ``data.train`` holds now (its
    digest: a prepared dataset's manifest, a text file's content); checkpoints without a digest are not checked."""
    was = None if saved is None else saved.trainer.get("data_digest")
    if was is not None and was != digest:
        raise UserError(f"data.train {cfg.data.train} is not the dataset this run was trained on (manifest {was} ≠ "
                        f"{digest})")


def load_data(cfg: RunConfig, tokenizer: Tokenizer) -> tuple[StreamLoader, Any, str]:
    """The training streams, the validation tokens (None without ``train.eval_every``) and the training data's
    digest; ``UserError`` for validation data no longer than a training window (checked now, not at the first
    validation)."""
    tc = cfg.train
    corpus = load_corpus(cfg.data.train, tokenizer, cfg.data.cache_dir, progress=tc.progress)
    loader = StreamLoader(corpus.tokens, tc.batch_size, tc.seq_len, corpus.doc_starts)
    valid = (load_corpus(cfg.data.valid, tokenizer, cfg.data.cache_dir, progress=tc.progress, role="valid")
             if tc.eval_every else None)
    if valid is not None and len(valid) <= tc.seq_len:
        raise UserError(f"data.valid {cfg.data.valid} holds {len(valid)} tokens; validation (train.eval_every) needs "
                        f"more than train.seq_len={tc.seq_len}")
    return loader, None if valid is None else valid.tokens, corpus.digest


def new_train_state(cfg: RunConfig, device: torch.device, shard: distributed.Shard = distributed.ALONE,
                    pretrained: Pretrained | None = None) -> TrainState:
    """Step 0 of the resolved ``cfg`` on ``device``: torch's RNG seeded with ``train.seed``, a new model (or the
    ``pretrained`` weights), AdamW and its schedule, the loss scaler (float16 only) and the state schemes of this
    process's streams."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    model = build_model(cfg.model, device=device)  # kernels chosen once, for this device
    if pretrained is not None:
        model.load_state_dict(pretrained.weights)
    optimizer, scheduler = optimizer_and_schedule(model, tc)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.dtype == "float16")  # a no-op unless float16
    own = shard.streams(tc.batch_size)  # this process's streams: their batch rows and carried states
    schemes = StateSchemes(cfg.state, model.initial_state(own.stop - own.start, device=device), tc.seed, shard)
    return TrainState(model, optimizer, scheduler, scaler, schemes)


def step_context(run: Run) -> StepContext:
    """How ``run``'s steps call its model: in ``DistributedDataParallel`` for several processes (its constructor
    copies rank 0's weights to every process and acts as a barrier), compiled with ``train.compile``."""
    tc = run.cfg.train
    wrapped = run.shard.wrap(run.state.model, run.device)
    forward = torch.compile(wrapped) if tc.compile else wrapped
    return StepContext(forward, wrapped, run.device, run.autocast, run.shard, tc.grad_accum, tc.grad_clip)
