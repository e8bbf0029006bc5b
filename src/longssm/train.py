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
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from . import checkpoint as ckpt_io
from .config import RunConfig, to_dict
from .convert import read_pretrained
from .data.corpus import load_corpus
from .data.streams import StreamLoader
from .data.tokenizer import load_tokenizer
from .errors import UserError
from .models import build_model
from .models.base import State, state_norms
from .state import StateSchemes, host_to_device


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={spec} but CUDA is not available on this machine")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise UserError(f"train.device must be auto, cpu, cuda or cuda:N; got {spec!r}") from None


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


def resolve_config(cfg: RunConfig, tokenizer) -> RunConfig:
    """Fill derived fields: the vocabulary size from the tokenizer, the batch size from the token budget."""
    model = cfg.model
    if model.vocab_size is None:
        model = replace(model, vocab_size=tokenizer.vocab_size)
    elif model.vocab_size < tokenizer.vocab_size:
        raise UserError(f"model.vocab_size={model.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}")
    train = replace(cfg.train, batch_size=cfg.train.resolved_batch_size)
    return replace(cfg, model=model, train=train)


class MetricsLog:
    """Appends JSON records to ``metrics.jsonl``; mirrors scalars to TensorBoard when it is installed."""

    def __init__(self, run_dir: Path, resume_step: int) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_step > 0 and self.path.exists():  # drop records a crashed run wrote after its last checkpoint
            kept = [l for l in self.path.read_text().splitlines() if l and json.loads(l).get("step", 0) <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:  # tensorboard is an optional extra
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
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
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``. ``resume``: None, "auto" (newest complete checkpoint, if any) or a path.

    ``init_from`` (a run, checkpoint, Hugging Face or mamba_ssm directory, see ``convert.read_pretrained``) starts a
    new run from those weights with a new optimizer and schedule: its model config and tokenizer replace ``cfg``'s
    and ``<run_dir>/source.json`` records it. Returns a summary dict.

    ``on_step(step, loss)`` is a hook for tests (e.g. to interrupt a run); it reads the loss of every step back
    from the device (the loss of a skipped step is the non-finite value itself).
    """
    run_dir = Path(run_dir)
    pretrained = None
    if init_from is not None:
        if _find_resume(run_dir, resume) is not None:
            raise UserError(f"--init-from starts a new run, but {run_dir} has a checkpoint to resume: drop one of them")
        pretrained = read_pretrained(init_from)
        cfg = replace(cfg, model=pretrained.model,
                      data=replace(cfg.data, tokenizer=pretrained.tokenizer or cfg.data.tokenizer))
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    autocast = _autocast(device, tc.dtype)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    cfg = resolve_config(cfg, tokenizer)
    tc = cfg.train
    corpus = load_corpus(cfg.data.train, tokenizer, cfg.data.cache_dir, progress=tc.progress)
    loader = StreamLoader(corpus.tokens, tc.batch_size, tc.seq_len, corpus.doc_starts)

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
    schemes = StateSchemes(cfg.state, model.initial_state(tc.batch_size, device=device), seed=tc.seed)
    start, bad_in_a_row = 0, 0

    ckpt = _find_resume(run_dir, resume)
    if ckpt is not None:
        saved = ckpt_io.read_config(ckpt)
        if to_dict(saved.model) != to_dict(cfg.model):
            raise UserError(f"cannot resume from {ckpt}: its model config differs from this run's")
        ckpt_io.load_weights(model, ckpt / "model.safetensors", device=device)
        trainer = ckpt_io.load_trainer(ckpt)
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        if trainer.get("scaler"):  # empty when the checkpointed run did not scale its loss
            scaler.load_state_dict(trainer["scaler"])
        torch.set_rng_state(trainer["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in trainer:
            torch.cuda.set_rng_state(trainer["cuda_rng"])
        schemes.load_state_dict(ckpt_io.load_states(ckpt))
        start, bad_in_a_row = int(trainer["step"]), int(trainer.get("bad_in_a_row", 0))
        print(f"resumed from {ckpt} at step {start}", file=sys.stderr)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if pretrained is not None:
        (run_dir / "source.json").write_text(json.dumps({"init_from": pretrained.source["path"],
                                                         "format": pretrained.source["format"]}, indent=1))
    log = MetricsLog(run_dir, start)
    step_model = torch.compile(model) if tc.compile else model

    def save(path: Path, step: int) -> None:
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
        ckpt_io.save_checkpoint(path, model, cfg, step, trainer_state, schemes.state_dict())

    from tqdm.auto import tqdm

    bar = tqdm(total=tc.steps, initial=start, desc=cfg.name, disable=not tc.progress, dynamic_ncols=True)
    tokens_per_step = tc.batch_size * tc.seq_len
    unread: list[tuple[Tensor, Tensor]] = []  # (loss, finite) of the steps the host has not read yet
    losses: list[float] = []  # finite losses since the last metrics record
    t_last, n_since, last_loss = time.perf_counter(), 0, float("nan")
    model.train()
    for step in range(start, tc.steps):
        batch = loader.batch(step)
        x, y = host_to_device(batch.x, device), host_to_device(batch.y, device)
        init = schemes.initial(batch)
        with autocast:
            logits, final = step_model(x, init)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm) & all_finite(final)
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

        log_due = done % tc.log_every == 0 or done == tc.steps
        checkpoint_due = tc.checkpoint_every > 0 and done % tc.checkpoint_every == 0 and done < tc.steps
        if log_due or checkpoint_due:  # the only place where the host waits for the device
            for s, (value, ok) in enumerate(read_back(unread), start=done - len(unread) + 1):
                if ok:
                    bad_in_a_row, last_loss = 0, value
                    losses.append(value)
                    continue
                bad_in_a_row += 1
                log.write({"step": s, "skipped": True, "reason": "non-finite loss, state or gradient"})
                bar.write(f"step {s}: non-finite loss/state/gradient, step skipped ({bad_in_a_row} in a row)")
                if bad_in_a_row >= tc.max_bad_steps:
                    bar.close()
                    log.close()
                    raise UserError(
                        f"training stopped: {bad_in_a_row} non-finite steps in a row at step {s} "
                        f"(last good checkpoint: {ckpt_io.latest_checkpoint(run_dir) or 'none'}); try a lower train.lr"
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
                "state_max_abs": state_norms(final),
            }
            log.write(record)
            bar.set_postfix(loss=f"{math.nan if mean_loss is None else mean_loss:.3f}", tok_s=f"{tok_s:,.0f}")
            t_last, n_since = now, 0
            losses.clear()
        if tc.eval_every and done % tc.eval_every == 0:
            val = validate(model, cfg, tokenizer, device)
            log.write({"step": done, "val_ppl_at_T": val})
            bar.write(f"step {done}: validation ppl @ T={tc.seq_len}: {val:.3f}")
            model.train()
        if checkpoint_due:
            save(run_dir / "checkpoints" / f"step-{done:08d}", done)
            ckpt_io.prune(run_dir, tc.keep_last)
        bar.update(1)
    bar.close()

    final_step = max(start, tc.steps)
    save(run_dir / "checkpoints" / f"step-{final_step:08d}", final_step)
    ckpt_io.prune(run_dir, tc.keep_last)
    ckpt_io.save_checkpoint(run_dir / "final", model, cfg, final_step)
    log.close()
    return {"run_dir": str(run_dir), "steps": final_step, "final_loss": last_loss, "batch_size": tc.batch_size}


def all_finite(state: State) -> Tensor:
    """0-dim bool tensor on the state's device: every value of every state tensor is finite (not read back)."""
    return torch.stack([torch.isfinite(v).all() for v in state.values()]).all()


def read_back(unread: list[tuple[Tensor, Tensor]]) -> list[tuple[float, bool]]:
    """The (loss, finite) of each step in ``unread``, copied from the device in one transfer (one host sync)."""
    if not unread:
        return []
    rows = torch.stack([torch.stack((loss, finite.to(loss.dtype))) for loss, finite in unread]).tolist()
    return [(value, bool(ok)) for value, ok in rows]


def _find_resume(run_dir: Path, resume: str | None) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        return ckpt_io.latest_checkpoint(run_dir)
    path = Path(resume)
    if not ckpt_io.is_complete(path):
        raise UserError(f"--resume {resume}: not a complete checkpoint directory")
    return path


def _autocast(device: torch.device, dtype: str):
    if dtype == "float32":
        return torch.autocast(device.type, enabled=False)
    if device.type != "cuda":
        raise UserError(f"train.dtype={dtype} needs a CUDA device (CPU training runs in float32)")
    return torch.autocast("cuda", dtype=getattr(torch, dtype))


@torch.no_grad()
def validate(model, cfg: RunConfig, tokenizer, device) -> float:
    """Perplexity at the training length on the first ``eval_tokens`` validation tokens, zero initial state."""
    from .evaluate.perplexity import ppl_vs_length

    corpus = load_corpus(cfg.data.valid, tokenizer, cfg.data.cache_dir, progress=False)
    model.eval()
    T = cfg.train.seq_len
    return ppl_vs_length(model, corpus.tokens, [T], max_tokens=cfg.train.eval_tokens, device=device)[str(T)]
