"""The training loop: stateful truncated BPTT over B contiguous streams, read top to bottom.

    for step k:
        x, y        = window k of every stream                        (data/streams.py)
        s_k         = scheme's initial state for window k              (state.py: zero, previous, noise, ...)
        logits, s'  = model(x, s_k)                                    (gradients stop at s_k: it is detached)
        loss        = cross-entropy(logits, y); clip; AdamW step; warmup + cosine schedule
        scheme.observe(s')                                             (carried to window k+1 / fitted stats)

Everything a resume needs — weights, optimizer, scheduler, loss scaler, the step (= data cursor), every stream's
carried state, fitted-noise statistics and every RNG — is in the checkpoint, so a resumed run continues
bit-identically.

No host syncs between log steps. A step reads nothing back from the device: batches and the schemes' masks and
noise are copied in without waiting (``state.host_to_device``), and whether a step is finite (loss, final states
and gradient norm) is a 0-dim device tensor ``finite`` that is *applied* on the device, not read:
- the fused AdamW skips its whole update (weights, moments and step count) when ``optimizer.found_inf`` is 1 —
  the hook ``torch.amp.GradScaler`` uses for fused optimizers;
- ``scheme.observe(s', finite)`` carries zeros instead of a non-finite step's states (the next window starts
  from zero) and leaves the fitted statistics unchanged.
The host reads the steps' losses and flags in one transfer at every log step, checkpoint and the last step; it
then writes a ``skipped`` record for each non-finite step and stops the run once ``max_bad_steps`` of them came
in a row. So a run of bad steps is noticed up to ``log_every − 1`` steps late, but it never touched the weights,
the optimizer or the carried states: those steps were skipped on the device. (The ``on_step`` hook reads every loss.)

``train.dtype float16`` (CUDA) scales the loss with a ``torch.amp.GradScaler``: gradients are unscaled before
clipping, a step whose gradients overflowed is skipped like any non-finite step (and the scale halved), and the
scaler's state is part of the checkpoint. ``bfloat16`` needs no scaler; ``float32`` turns autocast off.

Several processes (``torchrun``, see ``distributed.py``): each runs the loop above on its own streams of the global
batch (``shard.streams``) with the model in ``DistributedDataParallel``; ``finite``, the loss and a Ctrl-C are
agreed by all processes each step (``shard.agree``, ``shard.any``), so all take the same steps and stop together.
``train.grad_accum`` splits a process's streams into micro-batches (``forward_backward``). Rank 0 alone writes the
run directory; a checkpoint holds the carried states of all B streams, so any number of processes that divides B
can resume it.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from .. import checkpoint as ckpt_io
from ..config import RunConfig, TrainConfig, to_dict
from ..convert import read_pretrained
from ..data.corpus import load_corpus
from ..data.paths import BUILTIN_PREFIX, resolve_path
from ..data.streams import Batch, StreamLoader
from ..data.tokenizer import load_tokenizer
from ..errors import UserError
from ..models import build_model
from ..models.base import State, concat_states, map_state, select_rows, state_norms
from ..runtime import distributed
from ..runtime.device import autocast_for, resolve_device
from .schemes import StateSchemes, host_to_device


def lr_at(step: int, cfg) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio · lr`` at ``steps``."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


# State-space parameters that define the recurrence itself get no weight decay (as in Mamba and S5).
NO_DECAY = ("A_log", "D", "dt_bias", "Lambda_re_log", "Lambda_im", "log_step", "B", "C")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: not on norms, biases, embeddings, or the SSM's A, B, C, D, Δ."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if p.dim() >= 2 and leaf not in NO_DECAY and "embedding" not in name and "lm_head" not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_config(cfg: RunConfig, tokenizer, world_size: int = 1) -> RunConfig:
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


class MetricsLog:
    """Appends JSON records to ``metrics.jsonl``; mirrors scalars to TensorBoard when it is installed. Disabled
    (``enabled`` False: the processes other than rank 0), it touches no file."""

    def __init__(self, run_dir: Path, resume_step: int, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl" if enabled else None
        self.tb = None
        if self.path is None:
            return
        if resume_step > 0 and self.path.exists():  # drop records a crashed run wrote after its last checkpoint
            kept = [l for l in self.path.read_text().splitlines() if l and json.loads(l).get("step", 0) <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:  # tensorboard is an optional extra
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])
            for k, v in record.get("state_max_abs", {}).items():
                self.tb.add_scalar(f"state_max_abs/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(
    cfg: RunConfig, run_dir: str | Path, resume: str | None = None, on_step: Callable[[int, float], None] | None = None,
    init_from: str | Path | None = None, overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``. ``resume``: None, "auto" (newest complete checkpoint, if any) or a path.

    A ``run_dir`` that already holds a run is refused unless ``resume`` is given (continue it) or ``overwrite`` is
    (delete what that run wrote, ``checkpoint.RUN_ENTRIES``, once every input has been checked). "auto" skips a
    damaged newest checkpoint with a warning and resumes from the next older one.

    Ctrl-C (SIGINT) or SIGTERM (main thread; in any process of a torchrun run) lets the step in flight finish in
    every process, saves a checkpoint of it and raises ``Stopped`` (a ``KeyboardInterrupt`` whose message names the
    checkpoint); a second signal stops at once.

    ``init_from`` (a run, checkpoint, Hugging Face or mamba_ssm directory, see ``convert.read_pretrained``) starts a
    new run from those weights with a new optimizer and schedule: its model config and tokenizer replace ``cfg``'s
    and ``<run_dir>/source.json`` records it. Returns a summary dict.

    ``on_step(step, loss)`` is a hook for tests (e.g. to interrupt a run); it reads the loss of every step back
    from the device (the loss of a skipped step is the non-finite value itself).
    """
    run_dir = Path(run_dir)
    _check_run_dir(run_dir, resume, overwrite)
    pretrained = None
    if init_from is not None:
        if _resume_candidates(run_dir, resume):
            raise UserError(f"--init-from starts a new run, but {run_dir} has a checkpoint to resume: drop one of them")
        pretrained = read_pretrained(init_from)
        cfg = replace(cfg, model=pretrained.model,
                      data=replace(cfg.data, tokenizer=pretrained.tokenizer or cfg.data.tokenizer))
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    shard, device = distributed.init(resolve_device(tc.device))
    autocast = autocast_for(device, tc.dtype)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    cfg = resolve_config(cfg, tokenizer, shard.world)
    tc = cfg.train
    corpus = load_corpus(cfg.data.train, tokenizer, cfg.data.cache_dir, progress=tc.progress)
    loader = StreamLoader(corpus.tokens, tc.batch_size, tc.seq_len, corpus.doc_starts)
    valid = load_corpus(cfg.data.valid, tokenizer, cfg.data.cache_dir, progress=tc.progress) if tc.eval_every else None
    if valid is not None and len(valid) <= tc.seq_len:  # checked now, not at the first validation
        raise UserError(f"data.valid {cfg.data.valid} holds {len(valid)} tokens; validation (train.eval_every) needs "
                        f"more than train.seq_len={tc.seq_len}")
    saved = _read_resume(run_dir, resume, cfg)

    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    model = build_model(cfg.model).to(device)
    if pretrained is not None:
        model.load_state_dict(pretrained.weights)
    # fused: its update can be skipped on the device through ``found_inf`` (see the module docstring)
    optimizer = torch.optim.AdamW(
        param_groups(model, tc.weight_decay), lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=True
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, tc) / tc.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.dtype == "float16")  # a no-op unless float16
    own = shard.streams(tc.batch_size)  # this process's streams: their batch rows and carried states
    schemes = StateSchemes(cfg.state, model.initial_state(own.stop - own.start, device=device), tc.seed, shard)
    start, bad_in_a_row = 0, 0

    if saved is not None:
        ckpt_io.apply_weights(model, saved.weights, saved.path / "model.safetensors")
        trainer = saved.trainer
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        if trainer.get("scaler"):  # empty when the checkpointed run did not scale its loss
            scaler.load_state_dict(trainer["scaler"])
        torch.set_rng_state(trainer["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in trainer:
            torch.cuda.set_rng_state(trainer["cuda_rng"])
        schemes.load_state_dict(saved.states)
        start, bad_in_a_row = int(trainer["step"]), int(trainer.get("bad_in_a_row", 0))
        if shard.is_main:
            print(f"resumed from {saved.path} at step {start}{_repartitioned(saved.config, shard)}", file=sys.stderr)

    wrapped = shard.wrap(model, device)  # every process has checked its inputs before rank 0 writes below
    if shard.is_main:
        if overwrite:
            ckpt_io.clear_run(run_dir)
        for partial in ckpt_io.remove_partial(run_dir):
            print(f"warning: removed {partial}, left by an interrupted checkpoint write", file=sys.stderr)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if pretrained is not None:
            (run_dir / "source.json").write_text(json.dumps({"init_from": pretrained.source["path"],
                                                             "format": pretrained.source["format"]}, indent=1))
    log = MetricsLog(run_dir, start, enabled=shard.is_main)
    step_model = torch.compile(wrapped) if tc.compile else wrapped

    def save(path: Path, step: int) -> Path:
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "bad_in_a_row": bad_in_a_row,
        }
        if device.type == "cuda":
            trainer_state["cuda_rng"] = torch.cuda.get_rng_state()
        states = schemes.state_dict()  # every process: gathers the carried states of all streams
        if shard.is_main:
            ckpt_io.save_checkpoint(path, model, cfg, step, trainer_state, states)
            ckpt_io.prune(run_dir, tc.keep_last)
        return path

    from tqdm.auto import tqdm

    bar = tqdm(total=tc.steps, initial=start, desc=cfg.name, disable=not (tc.progress and shard.is_main),
               dynamic_ncols=True)
    note = bar.write if shard.is_main else lambda message: None
    tokens_per_step = tc.batch_size * tc.seq_len
    unread: list[tuple[Tensor, Tensor]] = []  # (loss, finite) of the steps the host has not read yet
    losses: list[float] = []  # finite losses since the last metrics record
    t_last, n_since = time.perf_counter(), 0
    last_loss: float | None = None  # None (JSON null) until a step's loss was finite
    model.train()
    with deferred_stop_signals() as stop_signal:
        for step in range(start, tc.steps):
            batch = loader.batch(step).rows(own)
            init = schemes.initial(batch)
            loss, final = forward_backward(step_model, wrapped, batch, init, tc.grad_accum, device, autocast, scaler)
            scaler.unscale_(optimizer)  # clip the true gradients
            max_norm = tc.grad_clip if tc.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            # every process takes or skips the step: finite in all of them; the loss of the global batch
            loss, finite = shard.agree(loss, torch.isfinite(loss) & torch.isfinite(grad_norm) & all_finite(final))
            optimizer.found_inf = (~finite).float()  # 1: the fused update is skipped on the device
            optimizer.step()
            scaler.update()  # float16: halve the scale after an overflow, double it after 2000 clean steps
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            schemes.observe(final, finite)
            unread.append((loss.detach(), finite))
            n_since += 1
            done = step + 1
            if on_step is not None:
                on_step(done, loss.item())

            stop = shard.any(bool(stop_signal())) and done < tc.steps  # a signal in this step: save, stop
            log_due = done % tc.log_every == 0 or done == tc.steps
            periodic = tc.checkpoint_every > 0 and done % tc.checkpoint_every == 0
            checkpoint_due = (periodic or stop) and done < tc.steps
            if log_due or checkpoint_due:  # the only place where the host waits for the device
                for s, (value, ok) in enumerate(read_back(unread), start=done - len(unread) + 1):
                    if ok:
                        bad_in_a_row, last_loss = 0, value
                        losses.append(value)
                        continue
                    bad_in_a_row += 1
                    log.write({"step": s, "skipped": True, "reason": "non-finite loss, state or gradient"})
                    note(f"step {s}: non-finite loss/state/gradient, step skipped ({bad_in_a_row} in a row)")
                    if bad_in_a_row >= tc.max_bad_steps:
                        bar.close()
                        log.close()
                        raise UserError(
                            f"training stopped: {bad_in_a_row} non-finite steps in a row at step {s} "
                            f"(last good checkpoint: {ckpt_io.latest_checkpoint(run_dir) or 'none'}); "
                            "try a lower train.lr"
                        )
                unread.clear()
            if log_due:
                now = time.perf_counter()
                tok_s = n_since * tokens_per_step / max(now - t_last, 1e-9)
                mean_loss = sum(losses) / len(losses) if losses else None  # None: every step since the last was skipped
                record = {
                    "step": done,
                    "loss": mean_loss,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens": done * tokens_per_step,
                    "tokens_per_s": tok_s,
                    "state_max_abs": state_norms(map_state(lambda v: shard.max(v.detach().abs().amax()), final)),
                    "world_size": shard.world,
                }
                log.write(record)
                bar.set_postfix(loss=f"{math.nan if mean_loss is None else mean_loss:.3f}", tok_s=f"{tok_s:,.0f}")
                t_last, n_since = now, 0
                losses.clear()
            if tc.eval_every and done % tc.eval_every == 0 and not stop:
                val = validate(model, valid.tokens, tc, device, shard)
                log.write({"step": done, "val_ppl_at_T": val})
                note(f"step {done}: validation ppl @ T={tc.seq_len}: {val:.3f}")
                model.train()
            if checkpoint_due:
                ckpt = save(run_dir / "checkpoints" / f"step-{done:08d}", done)
            if stop:
                bar.close()
                log.close()
                raise Stopped(f"saved {ckpt}; continue with --resume auto", stop_signal() or signal.SIGTERM)
            bar.update(1)
    bar.close()

    final_step = max(start, tc.steps)
    save(run_dir / "checkpoints" / f"step-{final_step:08d}", final_step)
    if shard.is_main:
        ckpt_io.save_checkpoint(run_dir / "final", model, cfg, final_step)
    log.close()
    return {"run_dir": str(run_dir), "steps": final_step, "final_loss": last_loss, "batch_size": tc.batch_size}


def forward_backward(
    model: torch.nn.Module, wrapped: torch.nn.Module, batch: Batch, init: State, accum: int, device: torch.device,
    autocast: torch.autocast, scaler: torch.amp.GradScaler,
) -> tuple[Tensor, State]:
    """Forward and backward passes of one step over ``batch`` (this process's streams) in ``accum`` micro-batches of
    consecutive streams, each started from its own rows of ``init``. A micro-batch's mean loss is divided by
    ``accum``, so the accumulated gradients are those of one pass over every stream; ``wrapped`` (the
    ``DistributedDataParallel`` module that ``model`` calls) synchronises them in the last backward only.
    Returns the step's mean loss (detached) and the final states of every stream."""
    rows = batch.x.shape[0] // accum
    losses, finals = [], []
    for i in range(accum):
        part = slice(i * rows, (i + 1) * rows)
        micro = batch.rows(part)
        x, y = host_to_device(micro.x, device), host_to_device(micro.y, device)
        with distributed.no_sync(wrapped, sync=i == accum - 1):
            with autocast:
                logits, final = model(x, select_rows(init, part))
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / accum
            scaler.scale(loss).backward()
        losses.append(loss.detach())
        finals.append(final)
    return sum(losses), concat_states(finals)


def _repartitioned(saved: RunConfig, shard: distributed.Shard) -> str:
    """A note for the resume message when another number of processes wrote the checkpoint (else "")."""
    was = saved.train.world_size
    return "" if was == shard.world else f" (saved by {was} processes, now {shard.world}: streams re-partitioned)"


def all_finite(state: State) -> Tensor:
    """0-dim bool tensor on the state's device: every value of every state tensor is finite (not read back)."""
    return torch.stack([torch.isfinite(v).all() for v in state.values()]).all()


def read_back(unread: list[tuple[Tensor, Tensor]]) -> list[tuple[float, bool]]:
    """The (loss, finite) of each step in ``unread``, copied from the device in one transfer (one host sync)."""
    if not unread:
        return []
    rows = torch.stack([torch.stack((loss, finite.to(loss.dtype))) for loss, finite in unread]).tolist()
    return [(value, bool(ok)) for value, ok in rows]


def _check_run_dir(run_dir: Path, resume: str | None, overwrite: bool) -> None:
    """``UserError`` for a run directory that is a file, or that holds a run neither resumed nor overwritten."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file, not a directory")
    if resume is not None and overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: give one of them")
    held = ckpt_io.holds_run(run_dir)
    if held and resume is None and not overwrite:
        raise UserError(f"--run-dir {run_dir} already holds {held}: continue it with --resume auto or replace it "
                        f"with --overwrite")


def _resume_candidates(run_dir: Path, resume: str | None) -> list[Path]:
    """The checkpoints ``resume`` names, best first: none; every ``step-*`` directory, newest first ("auto"); or
    the one given."""
    if resume is None:
        return []
    if resume == "auto":
        return sorted((run_dir / "checkpoints").glob("step-*"), reverse=True)
    return [Path(resume)]


def _read_resume(run_dir: Path, resume: str | None, cfg: RunConfig) -> ckpt_io.TrainingCheckpoint | None:
    """The checkpoint to resume from, read whole and checked against ``cfg`` (None: start at step 0). "auto" skips
    an incomplete or damaged checkpoint, with a warning naming it, for the next older one; ``UserError`` if none is
    usable."""
    skipped: list[str] = []
    for path in _resume_candidates(run_dir, resume):
        try:
            saved = ckpt_io.read_training_checkpoint(path)
        except UserError as e:
            if resume != "auto":
                raise UserError(f"--resume: {e}") from None
            skipped.append(str(e))
            continue
        _check_resumable(saved, cfg)
        for reason in skipped:
            print(f"warning: --resume auto skips a damaged checkpoint: {reason}", file=sys.stderr)
        return saved
    if skipped:
        raise UserError(f"--resume auto: no usable checkpoint in {run_dir / 'checkpoints'} ({'; '.join(skipped)}); "
                        f"start the run over with --overwrite instead of --resume")
    return None


def _check_resumable(saved: ckpt_io.TrainingCheckpoint, cfg: RunConfig) -> None:
    """``UserError`` when ``cfg`` changed what the checkpoint's weights or carried states depend on."""
    was, now = to_dict(saved.config.model), to_dict(cfg.model)
    changed = [k for k in now if was.get(k) != now[k]]
    if changed:
        raise UserError(f"cannot resume from {saved.path}: model.{changed[0]} is {was.get(changed[0])!r} there and "
                        f"{now[changed[0]]!r} here")
    if saved.config.train.batch_size != cfg.train.batch_size:
        raise UserError(f"cannot resume from {saved.path} with train.batch_size={cfg.train.batch_size}: its carried "
                        f"states belong to {saved.config.train.batch_size} streams")


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


@torch.no_grad()
def validate(model: torch.nn.Module, tokens: np.ndarray, tc: TrainConfig, device: torch.device,
             shard: distributed.Shard = distributed.ALONE) -> float:
    """Perplexity at the training length on the first ``eval_tokens`` validation tokens, zero initial state (the
    sequences split over the processes of ``shard``)."""
    from ..evaluate.perplexity import ppl_vs_length

    model.eval()
    T = tc.seq_len
    return ppl_vs_length(model, tokens, [T], max_tokens=tc.eval_tokens, device=device, shard=shard)[str(T)]
