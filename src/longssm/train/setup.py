"""Everything a training run is built from, checked before anything is written: the resolved config, the data,
the device, and a new ``TrainState`` (model, optimizer, schedule, scaler, state schemes)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import checkpoint as ckpt_io
from ..config import RunConfig
from ..data.corpus import load_corpus
from ..data.streams import StreamLoader
from ..data.tokenizer import Tokenizer, load_tokenizer
from ..errors import UserError
from ..models import build_model
from ..paths import BUILTIN_PREFIX, resolve_path
from ..pretrained import Pretrained, read_pretrained
from ..runtime import distributed
from ..runtime.device import autocast_for, resolve_device
from .resume import check_run_dir, read_resume, resume_candidates
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
    state: TrainState
    """A new state at step 0 (seeded by ``train.seed``; with the ``--init-from`` weights)."""


def prepare(cfg: RunConfig, run_dir: Path, resume: str | None, init_from: str | Path | None,
            overwrite: bool) -> Run:
    """Check the run directory and every input, resolve the config, read the data and the checkpoint to resume
    from, and build a new ``TrainState``, in that order: what fails first is reported and nothing is written."""
    check_run_dir(run_dir, resume, overwrite)
    cfg, pretrained = read_init_from(cfg, run_dir, resume, init_from)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    shard, device = distributed.init(resolve_device(cfg.train.device))
    autocast = autocast_for(device, cfg.train.dtype)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    cfg = resolve_config(cfg, tokenizer, shard.world)
    loader, valid = load_data(cfg, tokenizer)
    saved = read_resume(run_dir, resume, cfg)
    state = new_train_state(cfg, device, shard, pretrained)
    return Run(cfg, shard, device, autocast, loader, shard.streams(cfg.train.batch_size), valid, pretrained, saved,
               state)


def read_init_from(cfg: RunConfig, run_dir: Path, resume: str | None,
                   init_from: str | Path | None) -> tuple[RunConfig, Pretrained | None]:
    """``cfg`` with the model config and tokenizer of the ``--init-from`` directory, and what was read there
    (``cfg`` and None without ``init_from``)."""
    if init_from is None:
        return cfg, None
    if resume_candidates(run_dir, resume):
        raise UserError(f"--init-from starts a new run, but {run_dir} has a checkpoint to resume: drop one of them")
    pretrained = read_pretrained(init_from)
    cfg = replace(cfg, model=pretrained.model,
                  data=replace(cfg.data, tokenizer=pretrained.tokenizer or cfg.data.tokenizer))
    return cfg, pretrained


def resolve_config(cfg: RunConfig, tokenizer: Tokenizer, world_size: int = 1) -> RunConfig:
    """Fill derived fields: the vocabulary size from the tokenizer, the batch size from the token budget, the
    number of processes, and absolute data, tokenizer and cache paths (so the run's config.yaml works from any
    directory)."""
    model = cfg.model
    if model.vocab_size is None:
        model = replace(model, vocab_size=tokenizer.vocab_size)
    elif model.vocab_size < tokenizer.vocab_size:
        raise UserError(f"model.vocab_size={model.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}")
    train = replace(cfg.train, batch_size=cfg.train.resolved_batch_size, world_size=world_size)
    d = cfg.data
    data = replace(d, train=_absolute(d.train), valid=_absolute(d.valid), cache_dir=_absolute(d.cache_dir),
                   tokenizer=d.tokenizer if d.tokenizer in ("byte", "gpt2") else _absolute(d.tokenizer))
    return replace(cfg, model=model, train=train, data=data)


def _absolute(spec: str) -> str:
    """A path made absolute against the working directory; ``builtin:`` paths stay as they are."""
    return spec if spec.startswith(BUILTIN_PREFIX) else str(resolve_path(spec).absolute())


def load_data(cfg: RunConfig, tokenizer: Tokenizer) -> tuple[StreamLoader, np.ndarray | None]:
    """The training streams and the validation tokens (None without ``train.eval_every``); ``UserError`` for
    validation data no longer than a training window (checked now, not at the first validation)."""
    tc = cfg.train
    corpus = load_corpus(cfg.data.train, tokenizer, cfg.data.cache_dir, progress=tc.progress)
    loader = StreamLoader(corpus.tokens, tc.batch_size, tc.seq_len, corpus.doc_starts)
    valid = load_corpus(cfg.data.valid, tokenizer, cfg.data.cache_dir, progress=tc.progress) if tc.eval_every else None
    if valid is not None and len(valid) <= tc.seq_len:
        raise UserError(f"data.valid {cfg.data.valid} holds {len(valid)} tokens; validation (train.eval_every) needs "
                        f"more than train.seq_len={tc.seq_len}")
    return loader, None if valid is None else valid.tokens


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
