"""Training-free length extension: one learned multiplier per layer of Δ or of A, the weights untouched.

References
    [1] Azizi et al., "MambaExtend: A Training-Free Approach to Improve Long Context Extension of Mamba", ICLR 2025:
        a scale per layer on Δ (``method delta_scale``).
    [2] "Mamba Modulation" (NeurIPS 2025): a scale per layer on the spectrum of A (``method a_scale``).

With s_i the scale of layer i, ``delta_scale`` runs layer i with Δ·s_i (in exp(ΔA) and in the input term ΔB) and
``a_scale`` with A·s_i (exp(ΔA·s_i), the input term unchanged); see ``models/mamba.py`` and ``mamba2.py``. The scales
are ``model.delta_scale`` / ``model.a_scale`` of the run's config, so a calibrated run is an ordinary run.

Method (a gradient method, as [1]'s first-order variant): the weights are frozen; log s (n_layers,) starts at the
run's current scales and follows Adam on the mean next-token loss of ``target_length``-token windows of the
calibration text, one window per step, cycling over ``windows`` consecutive windows. Each window runs through the
chunked recurrence with the state carried from chunk to chunk, every chunk under activation checkpointing: the
gradient reaches the scales through the whole window (no truncation) while memory stays that of one chunk plus the
L / chunk carried states. Cost per step: about 3 forward passes of ``target_length`` tokens (forward, recomputation,
backward); before and after, one forward pass per window measures the loss.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from .checkpoint import load_model, save_run
from .data.corpus import load_corpus
from .data.tokenizer import load_tokenizer
from .errors import UserError
from .models import RecurrentLM
from .models.base import State
from .outputs import check_new_directory
from .runtime.feed import feed

Method = Literal["delta_scale", "a_scale"]


def window_loss(model: RecurrentLM, tokens: Tensor, scales: dict[str, Tensor], chunk: int) -> Tensor:
    """Mean next-token loss of ``tokens`` (b, L + 1) from the zero state, with the model's buffers named in
    ``scales`` ({"backbone.layers.{i}.mixer.delta_scale": 0-dim, ...}) replaced, L / chunk checkpointed chunks fed
    through ``runtime.feed.feed`` (its ``step``: each chunk's summed loss, recomputed in the backward pass)."""
    b, length = tokens.shape[0], tokens.shape[1] - 1

    def checkpointed_loss(t0: int, t1: int, state: State | None) -> tuple[Tensor, State]:
        return checkpoint(_chunk_loss, model, scales, tokens[:, t0:t1], tokens[:, t0 + 1:t1 + 1], state,
                          use_reentrant=False)

    total = torch.zeros(())
    for _, _, loss, _ in feed(model, tokens[:, :length], model.initial_state(b), chunk, step=checkpointed_loss):
        total = total + loss
    return total / (b * length)


def _chunk_loss(model: RecurrentLM, scales: dict[str, Tensor], x: Tensor, y: Tensor,
                state: State) -> tuple[Tensor, State]:
    """x, y (b, c), state -> summed cross-entropy of the chunk (0-dim), the state after it."""
    logits, state = functional_call(model, scales, (x, state))
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"), state


def calibrate_run(run: str | Path, method: Method, target_length: int, data: str, out: str | Path, steps: int = 20,
                  lr: float = 0.1, windows: int = 4, chunk: int = 1024) -> dict[str, object]:
    """Learn ``method``'s per-layer scales for ``target_length`` on ``data`` and write the run ``out`` (the weights
    of ``run``, the scales in its config). Returns ``{"scales", "loss_before", "loss_after", ...}``. ``out`` is
    checked first: it must not exist nor lie inside a checkpoint or a run's files (``outputs.py``)."""
    check_new_directory(out, "--out")
    if target_length < 1 or steps < 0 or windows < 1 or chunk < 1 or not lr > 0:
        raise UserError("--target-length, --windows and --chunk must be >= 1, --steps >= 0 and --lr > 0")
    model, cfg, ckpt = load_model(run)
    hybrid = cfg.model.layers is not None and set(cfg.model.layers) != {cfg.model.family}
    if cfg.model.family not in ("mamba", "mamba2") or hybrid:
        kind = cfg.model.family if not cfg.model.layers else "a hybrid of " + ",".join(cfg.model.layers)
        raise UserError(f"calibrate scales Δ or A of the mamba and mamba2 families; {run} is {kind!r}")
    model.requires_grad_(False)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    corpus = load_corpus(data, tokenizer, cfg.data.cache_dir, progress=False, role="valid")
    n = min(windows, (len(corpus.tokens) - 1) // target_length)
    if n < 1:
        raise UserError(f"--data {data} holds {len(corpus.tokens)} tokens: fewer than --target-length + 1")
    batches = [torch.as_tensor(corpus.tokens[i * target_length:(i + 1) * target_length + 1].astype("int64"))[None]
               for i in range(n)]

    names = [f"backbone.layers.{i}.mixer.{method}" for i in range(cfg.model.n_layers)]
    buffers = dict(model.named_buffers())
    log_scales = torch.stack([buffers[name].log() for name in names]).requires_grad_(True)  # (n_layers,)

    def scales() -> dict[str, Tensor]:
        return dict(zip(names, log_scales.exp()))

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(window_loss(model, w, scales(), chunk).item() for w in batches) / n

    loss_before = mean_loss()
    optimizer = torch.optim.Adam([log_scales], lr=lr)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        window_loss(model, batches[step % n], scales(), chunk).backward()
        optimizer.step()
    loss_after = mean_loss()

    learned = [float(v) for v in log_scales.detach().exp()]
    calibrated = replace(cfg, name=Path(out).name, model=replace(cfg.model, **{method: learned}))
    summary = {"calibrated_from": str(ckpt.resolve()), "method": method, "target_length": target_length,
               "data": corpus.source, "windows": n, "steps": steps, "lr": lr, "scales": learned,
               "loss_before": loss_before, "loss_after": loss_after}
    save_run(out, model, calibrated, summary)
    return summary
