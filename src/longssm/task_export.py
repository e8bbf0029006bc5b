"""``longssm tasks export``: the long-context tasks of ``data/tasks.py`` written as lm-evaluation-harness tasks.

Each (length, axis value) cell of a task holds the instances that its evaluation metric scores (the same
``data.tasks.instances`` call: same tokenizer, haystack, settings, trials and seed), so that ``longssm eval RUN
--metrics mqar`` and ``longssm lm-eval RUN --include-path DIR --tasks longssm_mqar`` agree instance for instance.
(``passkey`` is ``data.tasks``' passkey with these settings too: the ``passkey`` metric, ``evaluate/passkey.py``,
builds its own prompts and ranks the answers, so it has no twin here.)
An instance becomes one lm-eval request per answer:

    context   the text before the answer (the earlier answers of the instance included: teacher forcing)
    target    the answer's text (it starts with a space)

``output_type: loglikelihood`` with ``metric_list: [acc]``: a request is right when every token of the target is
the model's argmax given the text before it (the harness's ``is_greedy``), which is the metric's hit. The harness's
``acc`` is the mean over the requests, i.e. the hits over the answers of every cell of the task.

Written into the output directory (by the rules of ``outputs.py``: nothing longssm did not write is overwritten
without ``--force``; every file is staged and moved into place together):

    <task>.jsonl    one request a line: context, target, length, axis_value, instance, answer (every request
                    holds its whole context: copy, with hundreds of answers per instance, makes big files)
    <task>.yaml     the harness task ``longssm_<task>`` (``dataset_path: json``; ``data_files`` is the absolute
                    path of the .jsonl: the folder is read where it was written)
    manifest.json   the settings, the counts per cell, and the commands
    README.md       the same for people

Every request is checked as the harness will split it (``TemplateLM._encode_pair``: the context's trailing
whitespace moved to the continuation, the whole text encoded, the context's ids cut off): the context's ids must
be the instance's tokens before the answer and the continuation's the answer's tokens. The generators guarantee
this for tokenizers that split words at whitespace first (byte, GPT-2); another ``tokenizer.json`` that merges
across the pieces is a ``UserError`` naming the task.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import DEFAULT_LENGTHS, EvalConfig
from .data.tasks import EVAL_TASKS, Instance, Task, axis_key, chance, get_task, instances, load_haystack
from .data.tokenizer import Tokenizer, load_tokenizer
from .errors import UserError
from .evaluate.tasks import PREFIXES, axis_values, task_lengths, task_settings
from .outputs import check_directory, staged_outputs

FORMAT = 1
"""Version of the files written (``manifest.json``'s ``format``)."""
LM_EVAL_PREFIX = "longssm_"
"""The harness task of ``mqar`` is ``longssm_mqar``."""
AXIS_KEYS = {"depth": "task_depths", "pairs": "mqar_pairs", "fraction": "copy_fractions"}
"""A task's axis -> the ``EvalConfig`` key of its values (``evaluate.tasks.axis_values``)."""
COMMON_KEYS = ("task_trials", "task_haystack", "seed")


@dataclass
class Plan:
    """What one task's export holds: its settings, lengths and axis values, checked."""

    task: Task
    settings: dict[str, int]
    lengths: list[int]
    values: list[float]


def lm_eval_name(task: str) -> str:
    return LM_EVAL_PREFIX + task


def output_names(tasks: list[str]) -> list[str]:
    """The files an export of ``tasks`` writes into its directory."""
    return [f"{t}{ext}" for t in tasks for ext in (".jsonl", ".yaml")] + ["manifest.json", "README.md"]


def task_keys(task: Task) -> list[str]:
    """The ``EvalConfig`` keys of ``task``'s axis and settings (``evaluate.tasks.PREFIXES``)."""
    return [AXIS_KEYS[task.axis]] + [PREFIXES[task.name] + key for key in task.params]


def plan(task: Task, tokenizer: Tokenizer, cfg: EvalConfig) -> Plan:
    """``task``'s settings, lengths and axis values from ``cfg``, as its metric resolves them: ``--task-lengths``
    (each checked to hold the task's content), else the lengths 16, 32, ..., 8192 that hold it (the metric's
    default for data with at least 8192 tokens per sequence)."""
    settings = task_settings(cfg, task)
    task.check_params(settings)
    hay = load_haystack(cfg.task_haystack, tokenizer)
    lengths = task_lengths(cfg, tokenizer, list(DEFAULT_LENGTHS), task, hay, settings)  # those of long enough data
    return Plan(task, settings, lengths, axis_values(cfg, task))


def lm_eval_texts(context: str, target: str) -> tuple[str, str]:
    """(the context, the whole text) that the harness encodes for a causal request (``TemplateLM._encode_pair``:
    the context's trailing whitespace is moved to the continuation)."""
    return context.rstrip(), context + target


def requests(plan: Plan, tokenizer: Tokenizer, hay: Any, cfg: EvalConfig, tokenizer_name: str) -> Iterator[dict]:
    """Every request of ``plan``'s task, cell by cell, checked (module docstring)."""
    task = plan.task
    for length in plan.lengths:
        for value in plan.values:
            cell = instances(task, tokenizer, hay, length, value, cfg.task_trials, cfg.seed, plan.settings)
            for k, instance in enumerate(cell):
                yield from instance_requests(task, tokenizer, instance, length, value, k, tokenizer_name)


def instance_requests(task: Task, tokenizer: Tokenizer, instance: Instance, length: int, value: float, k: int,
                      tokenizer_name: str) -> Iterator[dict]:
    """The requests of one instance, each checked: the harness's context ids (``lm_eval_texts``) are the tokens
    before the answer, and the rest of its whole text's ids the answer's tokens."""
    tokens, spans, targets = instance.tokens, instance.spans(), instance.answer_texts()
    contexts = [instance.context_text(i) for i in range(len(targets))]
    texts = [t for c, a in zip(contexts, targets) for t in lm_eval_texts(c, a)]
    encoded = {text: tokenizer.encode(text) for text in dict.fromkeys(texts)}  # copy: context i + 1 = whole i
    axis_value: int | float = int(value) if task.axis == "pairs" else float(value)
    for i, ((a, b), context, target) in enumerate(zip(spans, contexts, targets)):
        head_text, whole_text = lm_eval_texts(context, target)
        head, whole = encoded[head_text], encoded[whole_text]
        if not context or head != tokens[:a] or whole[len(head):] != tokens[a:b]:
            raise UserError(
                f"task {task.name}: with tokenizer {tokenizer_name}, answer {i} of instance {k} (length {length}, "
                f"{task.axis} {axis_key(task, value)}) re-tokenizes differently from the instance's pieces, so "
                f"lm-eval would score other tokens than the {task.name} metric; use the byte or gpt2 tokenizer")
        yield {"context": context, "target": target, "length": length, "axis_value": axis_value, "instance": k,
               "answer": i}


def task_yaml(task: str, data_file: Path) -> str:
    config = {
        "task": lm_eval_name(task),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "loglikelihood",
        "doc_to_text": "{{context}}",
        "doc_to_target": "{{target}}",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": FORMAT},
    }
    return (f"# written by `longssm tasks export`: {task} from longssm.data.tasks, one request per answer "
            f"(see manifest.json)\n") + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def option(key: str, value: Any) -> str:
    """``--task-lengths 64,128``: an ``EvalConfig`` key and value as the command line takes them."""
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return f"--{key.replace('_', '-')} {shlex.quote(text)}"


def options(cfg: EvalConfig, plans: list[Plan], lengths: list[int] | None) -> list[str]:
    """The ``EvalConfig`` options that reproduce ``plans`` (every relevant key, defaults included)."""
    keys = list(dict.fromkeys(key for p in plans for key in task_keys(p.task)))
    given = ([option("task_lengths", lengths)] if lengths else [])
    return given + [option(key, getattr(cfg, key)) for key in (*COMMON_KEYS, *keys)]


def commands(out: Path, tokenizer_name: str, cfg: EvalConfig, plans: list[Plan]) -> dict[str, Any]:
    """The command that made the export, and those that score it: lm-eval's and the metrics' (one ``eval`` per
    set of lengths: ``--task-lengths`` applies to every metric; passkey's metric is another one)."""
    names = [p.task.name for p in plans]
    export = " ".join(["longssm tasks export --out", shlex.quote(str(out)), "--tasks", ",".join(names),
                       "--tokenizer", shlex.quote(tokenizer_name), *options(cfg, plans, cfg.task_lengths)])
    lm_eval = (f"longssm lm-eval RUN --include-path {shlex.quote(str(out))} --tasks "
               f"{','.join(lm_eval_name(n) for n in names)}")
    by_lengths: dict[tuple[int, ...], list[Plan]] = {}
    for p in plans:
        if p.task.name in EVAL_TASKS:
            by_lengths.setdefault(tuple(p.lengths), []).append(p)
    evals = [" ".join(["longssm eval RUN --metrics", ",".join(p.task.name for p in group),
                       *options(cfg, group, list(lengths))]) for lengths, group in by_lengths.items()]
    return {"export": export, "lm_eval": lm_eval, "eval": evals}


def readme(manifest: dict[str, Any]) -> str:
    lines = ["# Long-context tasks for lm-evaluation-harness", "",
             "Written by `longssm tasks export` (longssm.data.tasks): one `loglikelihood` request per answer, "
             "context = the text before the answer (earlier answers included), target = the answer; `acc` = the "
             "share of answers whose every token is the model's argmax, as `longssm eval --metrics TASK` scores "
             "them.", "",
             f"Tokenizer `{manifest['tokenizer']}`, haystack `{manifest['haystack']}`, {manifest['trials']} "
             f"instances per cell, seed {manifest['seed']}. The task YAMLs read their `.jsonl` at its absolute "
             f"path: move the folder and export again.", "",
             "| lm-eval task | axis | lengths | axis values | settings | instances | requests | chance |",
             "|---|---|---|---|---|---|---|---|"]
    for t in manifest["tasks"].values():
        settings = ", ".join(f"{k}={v}" for k, v in t["settings"].items())
        lines.append(f"| {t['lm_eval_task']} | {t['axis']} | {', '.join(map(str, t['lengths']))} | "
                     f"{', '.join(map(str, t['axis_values']))} | {settings} | {t['instances']} | {t['requests']} | "
                     f"{t['chance']:.3g} |")
    cmd = manifest["commands"]
    lines += ["", "Made by", "", "```", cmd["export"], "```", "", "Scored by lm-eval", "", "```", cmd["lm_eval"],
              "```"]
    if cmd["eval"]:
        lines += ["", "and, with the same instances, by longssm's metrics", "", "```", *cmd["eval"], "```"]
    return "\n".join(lines) + "\n"


def export_tasks(out: str | Path, tasks: list[str], tokenizer: str | Tokenizer = "byte",
                 cfg: EvalConfig | None = None, force: bool = False) -> dict[str, Any]:
    """Write ``tasks`` (names of ``data.tasks.TASKS``) into the directory ``out`` as lm-eval tasks (module
    docstring), with the task settings of ``cfg`` (``EvalConfig``: task_lengths, task_trials, task_haystack, seed,
    the axis values and the task keys); ``force`` overwrites files there that longssm did not write. Everything
    is checked before anything is written. Returns the manifest."""
    cfg = cfg if cfg is not None else EvalConfig()
    names = list(dict.fromkeys(t.strip() for t in tasks if t.strip()))
    if not names:
        raise UserError("--tasks: give at least one task")
    chosen = [get_task(n) for n in names]
    out = check_directory(out, "--out", tuple(output_names(names)), force)
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    tokenizer_name = tokenizer if isinstance(tokenizer, str) else tok.name
    plans = [plan(t, tok, cfg) for t in chosen]
    hay = load_haystack(cfg.task_haystack, tok)
    final = out.resolve()
    summary: dict[str, Any] = {}
    with staged_outputs(out, "--out", force) as staging:
        for p in plans:
            name = p.task.name
            counts: dict[str, dict[str, dict[str, int]]] = {}
            with open(staging / f"{name}.jsonl", "w", encoding="utf-8") as f:
                for row in requests(p, tok, hay, cfg, tokenizer_name):
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    cell = counts.setdefault(str(row["length"]), {}).setdefault(axis_key(p.task, row["axis_value"]),
                                                                               {"instances": 0, "answers": 0})
                    cell["answers"] += 1
                    cell["instances"] = max(cell["instances"], row["instance"] + 1)
            (staging / f"{name}.yaml").write_text(task_yaml(name, final / f"{name}.jsonl"), encoding="utf-8")
            summary[name] = {
                "lm_eval_task": lm_eval_name(name), "axis": p.task.axis, "lengths": p.lengths,
                "axis_values": [int(v) if p.task.axis == "pairs" else v for v in p.values],
                "settings": p.settings, "chance": chance(p.task, p.settings),
                "instances": sum(c["instances"] for cells in counts.values() for c in cells.values()),
                "requests": sum(c["answers"] for cells in counts.values() for c in cells.values()),
                "cells": counts, "files": [f"{name}.jsonl", f"{name}.yaml"]}
        manifest = {"format": FORMAT, "tokenizer": tokenizer_name, "tokenizer_identity": tok.identity,
                    "haystack": cfg.task_haystack, "trials": cfg.task_trials, "seed": cfg.seed, "tasks": summary,
                    "commands": commands(out, tokenizer_name, cfg, plans)}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(readme(manifest), encoding="utf-8")
    return manifest
