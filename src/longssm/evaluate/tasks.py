"""The long-context tasks of ``data/tasks.py`` as evaluation metrics: accuracy over a grid of length L × the task's
axis (needle depth, number of key-value pairs, fraction of L to copy).

Each instance is read once, as one exact chunked recurrence from a zero state (``runtime.feed``: only the state is
carried from chunk to chunk, never the context), and scored teacher-forced: an answer is a hit when every one of its
tokens is the argmax of the logits before it. Instances of one cell run as one batch, padded at their ends (what
follows an instance's last token is never read). Several processes (``torchrun``) split each cell's instances and
sum their hits. Each length is cached on its own, keyed by every setting.

Registers the metrics ``mqar``, ``copy``, ``niah_multikey``, ``niah_multivalue``, ``niah_multiquery`` and
``variable_tracking`` (``passkey`` keeps its own metric, ``passkey.py``, with its ranked accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.tasks import EVAL_TASKS, TASKS, Instance, Task, TooShort, axis_key, chance, instances, load_haystack
from ..errors import UserError
from ..runtime.feed import feed
from .registry import MetricResult, register_metric

if TYPE_CHECKING:
    from ..config import EvalConfig
    from .context import EvalContext

PREFIXES = {"mqar": "mqar_", "copy": "copy_", "niah_multikey": "niah_", "niah_multivalue": "niah_",
            "niah_multiquery": "niah_", "variable_tracking": "vt_", "passkey": "passkey_"}
"""Task -> the prefix of its settings in ``EvalConfig`` (``mqar_digits`` is mqar's ``digits``)."""
LONGEST_DEFAULT_LENGTH = 8192


@dataclass
class TaskResult(MetricResult):
    """Accuracy of one task over lengths × axis values. Maps are keyed by ``str(L)``, then ``str(axis value)``."""

    task: str
    axis: str
    """depth, pairs or fraction (``data/tasks.py``)."""
    lengths: list[int]
    axis_values: list[float]
    trials: int
    """Instances per cell."""
    settings: dict[str, int]
    haystack: str
    chance: float
    """Accuracy of a uniform guess, per answer."""
    accuracy: dict[str, dict[str, float]]
    """Answers right / answers asked, per cell."""
    answers: dict[str, dict[str, int]]
    """Answers asked per cell."""
    mean_accuracy: dict[str, float]
    """Over the axis values, per length."""
    examples: dict[str, dict[str, dict[str, list[str]]]]
    """The first instance's ``{"answers", "predicted"}`` per cell."""


def task_settings(cfg: EvalConfig, task: Task) -> dict[str, int]:
    """The task's settings from ``cfg`` (``PREFIXES``)."""
    prefix = PREFIXES[task.name]
    return {key: int(getattr(cfg, prefix + key)) for key in task.params}


def axis_values(cfg: EvalConfig, task: Task) -> list[float]:
    return [float(v) for v in {"depth": cfg.task_depths, "pairs": cfg.mqar_pairs,
                               "fraction": cfg.copy_fractions}[task.axis]]


def _fits(task: Task, cfg: EvalConfig, tokenizer, hay, length: int, settings: dict[str, int]) -> bool:
    try:
        instances(task, tokenizer, hay, length, max(axis_values(cfg, task)), 1, cfg.seed, settings)
    except TooShort:
        return False
    return True


def task_lengths(cfg: EvalConfig, tokenizer, lengths: list[int], task: Task, hay,
                 settings: dict[str, int]) -> list[int]:
    """``cfg.task_lengths`` (each checked: a length too short for the content is a ``UserError``), else those of the
    evaluation ``lengths`` up to 8192 that hold the task's content."""
    if cfg.task_lengths:
        for length in cfg.task_lengths:
            instances(task, tokenizer, hay, length, max(axis_values(cfg, task)), 1, cfg.seed, settings)
        return list(cfg.task_lengths)
    chosen = [L for L in lengths if L <= LONGEST_DEFAULT_LENGTH and _fits(task, cfg, tokenizer, hay, L, settings)]
    if not chosen:
        raise UserError(f"{task.name}: no evaluation length up to {LONGEST_DEFAULT_LENGTH} holds the task's content; "
                        f"give --task-lengths")
    return chosen


@torch.no_grad()
def predict(model: torch.nn.Module, batch: list[Instance], chunk: int, device: torch.device) -> list[list[list[int]]]:
    """Per instance, per answer: the argmax token ids at the answer's positions (teacher-forced), from one chunked
    recurrence of the padded batch (b, max length)."""
    longest = max(len(x.tokens) for x in batch)
    rows = torch.zeros(len(batch), longest, dtype=torch.long)
    for i, x in enumerate(batch):
        rows[i, : len(x.tokens)] = torch.tensor(x.tokens)
    spans = [x.spans() for x in batch]
    wanted = sorted({p - 1 for s in spans for a, b in s for p in range(a, b)})  # logits at p − 1 predict token p
    argmax: dict[int, torch.Tensor] = {}
    for t0, t1, logits, _ in feed(model, rows.to(device), None, chunk):
        lo, hi = np.searchsorted(wanted, t0), np.searchsorted(wanted, t1)
        for p in wanted[lo:hi]:
            argmax[p] = logits[:, p - t0].argmax(-1).cpu()
        del logits
    return [[[int(argmax[p - 1][i]) for p in range(a, b)] for a, b in spans[i]] for i in range(len(batch))]


def score_cell(ctx: EvalContext, task: Task, hay, length: int, value: float, settings: dict[str, int],
               bar) -> dict[str, Any]:
    """``{"hits", "answers", "example"}`` of one cell: this process's part of its instances, summed over the
    processes."""
    cfg = ctx.cfg
    cell = instances(task, ctx.tokenizer, hay, length, value, cfg.task_trials, cfg.seed, settings)
    mine = cell[ctx.shard.part(len(cell))]
    hits, asked, example = 0, 0, {"answers": cell[0].answer_texts(), "predicted": []}
    group = max(1, ctx.tokens_per_forward // max(1, min(cfg.chunk, length)))
    for g0 in range(0, len(mine), group):
        batch = mine[g0 : g0 + group]
        for x, predicted in zip(batch, predict(ctx.model, batch, cfg.chunk, ctx.device)):
            for ids, (a, b) in zip(predicted, x.spans()):
                hits += ids == x.tokens[a:b]
                asked += 1
            if x is cell[0]:
                example["predicted"] = [ctx.tokenizer.decode(ids) for ids in predicted]
        bar.update(sum(len(x.tokens) for x in batch))
    totals = ctx.shard.sum(torch.tensor([hits, asked], dtype=torch.float64))
    if ctx.shard.world > 1:  # the first instance is rank 0's
        example["predicted"] = example["predicted"] if ctx.shard.is_main else []
    return {"hits": int(totals[0]), "answers": int(totals[1]), "example": example}


def task_metric_settings(name: str):
    """The settings hook of the metric ``name``: its lengths, axis values and settings, checked before any metric
    runs."""

    def settings(ctx: EvalContext) -> dict[str, Any]:
        task = TASKS[name]
        params = task_settings(ctx.cfg, task)
        task.check_params(params)
        hay = load_haystack(ctx.cfg.task_haystack, ctx.tokenizer)
        lengths = task_lengths(ctx.cfg, ctx.tokenizer, ctx.lengths, task, hay, params)
        return {f"{name}_lengths": lengths, f"{name}_axis": axis_values(ctx.cfg, task), f"{name}_settings": params,
                "task_trials": ctx.cfg.task_trials,
                "task_haystack": ctx.cfg.task_haystack}

    return settings


def compute_task(ctx: EvalContext, name: str) -> TaskResult:
    """The grid of one task, each length cached on its own."""
    cfg, task = ctx.cfg, TASKS[name]
    params = task_settings(cfg, task)
    hay = load_haystack(cfg.task_haystack, ctx.tokenizer)
    lengths, values = task_lengths(ctx.cfg, ctx.tokenizer, ctx.lengths, task, hay, params), axis_values(cfg, task)
    key = {"format": 1, "axis": values, "trials": cfg.task_trials, "settings": params, "seed": cfg.seed,
           "haystack": cfg.task_haystack, "tokenizer": ctx.tokenizer.identity}
    per_length: dict[str, dict[str, Any]] = {}
    with ctx.bar(ctx.share(cfg.task_trials) * len(values) * sum(lengths), name) as bar:
        for length in lengths:
            def compute(length: int = length) -> dict[str, Any]:
                return {axis_key(task, v): score_cell(ctx, task, hay, length, v, params, bar) for v in values}
            per_length[str(length)] = ctx.cache.get_or_compute(name, length, key, compute)
    accuracy = {L: {v: c["hits"] / max(1, c["answers"]) for v, c in cells.items()} for L, cells in per_length.items()}
    return TaskResult(
        task=name, axis=task.axis, lengths=lengths, axis_values=values, trials=cfg.task_trials, settings=params,
        haystack=cfg.task_haystack, chance=chance(task, params), accuracy=accuracy,
        answers={L: {v: c["answers"] for v, c in cells.items()} for L, cells in per_length.items()},
        mean_accuracy={L: float(np.mean(list(acc.values()))) for L, acc in accuracy.items()},
        examples={L: {v: c["example"] for v, c in cells.items()} for L, cells in per_length.items()},
    )


def _register(name: str) -> None:
    @register_metric(name, TaskResult, settings=task_metric_settings(name))
    def compute(ctx: EvalContext) -> TaskResult:
        return compute_task(ctx, name)


for _name in EVAL_TASKS:
    _register(_name)
