"""The training loop: stateful truncated BPTT over B contiguous streams, read top to bottom.

    for step k:
        x, y        = window k of every stream                        (data/streams.py)
        s_k         = scheme's initial state for window k              (state.py: zero, previous, noise, ...)
        logits, s'  = model(x, s_k)                                    (gradients stop at s_k: it is detached)
        loss        = cross-entropy(logits, y); AdamW step; clip; warmup + cosine schedule
        scheme.observe(s')                                             (carried to window k+1 / fitted stats)

Everything a resume needs — weights, optimizer, scheduler, the step (= data cursor), every stream's carried
state, fitted-noise statistics and every RNG — is in the checkpoint, so a resumed run continues
bit-identically.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from . import checkpoint as ckpt_io
from .config import RunConfig, to_dict
from .data.corpus import load_corpus
from .data.streams import StreamLoader
from .data.tokenizer import load_tokenizer
from .errors import UserError
from .models import build_model
from .models.base import state_norms
from .state import StateSchemes


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


def train(cfg: RunConfig, run_dir: str | Path, resume: str | None = None, on_step=None) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``. ``resume``: None, "auto" (newest complete checkpoint, if any) or a path.

    Returns a summary dict. ``on_step(step, loss)`` is a hook for tests (e.g. to interrupt a run).
    """
    run_dir = Path(run_dir)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    cfg = resolve_config(cfg, tokenizer)
    tc = cfg.train
    corpus = load_corpus(cfg.data.train, tokenizer, cfg.data.cache_dir, progress=tc.progress)
    loader = StreamLoader(corpus.tokens, tc.batch_size, tc.seq_len, corpus.doc_starts)

    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    model = build_model(cfg.model).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(tc.beta1, tc.beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, tc) / tc.lr)
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
        torch.set_rng_state(trainer["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in trainer:
            torch.cuda.set_rng_state(trainer["cuda_rng"])
        schemes.load_state_dict(ckpt_io.load_states(ckpt))
        start, bad_in_a_row = int(trainer["step"]), int(trainer.get("bad_in_a_row", 0))
        print(f"resumed from {ckpt} at step {start}", file=sys.stderr)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    log = MetricsLog(run_dir, start)
    step_model = torch.compile(model) if tc.compile else model
    autocast = _autocast(device, tc.dtype)

    def save(path: Path, step: int) -> None:
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
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
    t_last, n_since, loss_sum = time.perf_counter(), 0, 0.0
    last_loss = float("nan")
    model.train()
    for step in range(start, tc.steps):
        batch = loader.batch(step)
        x, y = batch.x.to(device), batch.y.to(device)
        init = schemes.initial(batch)
        with autocast:
            logits, final = step_model(x, init)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        finite = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(v).all()) for v in final.values())
        if finite:
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
            finite = bool(torch.isfinite(grad_norm))
        if finite:
            optimizer.step()
            schemes.observe(final)
            bad_in_a_row = 0
        else:
            bad_in_a_row += 1
            schemes.forget()
            log.write({"step": step + 1, "skipped": True, "reason": "non-finite loss, state or gradient"})
            bar.write(f"step {step + 1}: non-finite loss/state/gradient, step skipped ({bad_in_a_row} in a row)")
            if bad_in_a_row >= tc.max_bad_steps:
                bar.close()
                log.close()
                raise UserError(
                    f"training stopped: {bad_in_a_row} non-finite steps in a row at step {step + 1} "
                    f"(last good checkpoint: {ckpt_io.latest_checkpoint(run_dir) or 'none'}); try a lower train.lr"
                )
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        loss_value = float(loss.detach())
        last_loss = loss_value if finite else last_loss
        loss_sum += loss_value if finite else 0.0
        n_since += 1
        done = step + 1
        if on_step is not None:
            on_step(done, loss_value)

        if done % tc.log_every == 0 or done == tc.steps:
            now = time.perf_counter()
            tok_s = n_since * tokens_per_step / max(now - t_last, 1e-9)
            record = {
                "step": done,
                "loss": loss_sum / n_since,
                "lr": scheduler.get_last_lr()[0],
                "tokens": done * tokens_per_step,
                "tokens_per_s": tok_s,
                "state_max_abs": state_norms(final),
            }
            log.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{tok_s:,.0f}")
            t_last, n_since, loss_sum = now, 0, 0.0
        if tc.eval_every and done % tc.eval_every == 0:
            val = validate(model, cfg, tokenizer, device)
            log.write({"step": done, "val_ppl_at_T": val})
            bar.write(f"step {done}: validation ppl @ T={tc.seq_len}: {val:.3f}")
            model.train()
        if tc.checkpoint_every and done % tc.checkpoint_every == 0 and done < tc.steps:
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
