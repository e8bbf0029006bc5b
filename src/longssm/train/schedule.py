"""The learning-rate schedule (linear warmup, cosine decay to a floor) and AdamW's parameter groups."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio · lr`` at ``steps``:

        lr(s) = lr · (s + 1) / W                                       s < W
        lr(s) = floor + ½ (lr − floor) (1 + cos(π · min(1, (s − W) / max(1, steps − W))))   otherwise
    """
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


def optimizer_and_schedule(
    model: torch.nn.Module, tc: TrainConfig
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``param_groups`` and the ``lr_at`` schedule as a ``LambdaLR``. Fused: its update can be skipped on
    the device through ``found_inf`` (see ``step.train_step``)."""
    optimizer = torch.optim.AdamW(
        param_groups(model, tc.weight_decay), lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=True
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, tc) / tc.lr)
    return optimizer, scheduler


def reapply_config(optimizer: torch.optim.AdamW, scheduler: torch.optim.lr_scheduler.LambdaLR, tc: TrainConfig) -> None:
    """After loading a checkpoint's optimizer and scheduler (whose hyperparameters are those it was saved with),
    put ``tc``'s back: the learning rate and its schedule (the lr of the next step, computed as ``LambdaLR`` does,
    so an unchanged config resumes bit-identically), the betas and the weight decay of each ``param_groups``
    group. A resume that changes ``train.lr``, ``train.steps`` or the betas then trains with the new values."""
    scheduler.base_lrs = [tc.lr for _ in optimizer.param_groups]
    decay = [tc.weight_decay, 0.0]
    for i, (group, lam) in enumerate(zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True)):
        group["initial_lr"] = tc.lr
        group["lr"] = tc.lr * lam(scheduler.last_epoch)
        group["betas"] = (tc.beta1, tc.beta2)
        group["weight_decay"] = decay[i] if i < len(decay) else group["weight_decay"]
