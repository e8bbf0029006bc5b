"""``longssm sweep``: train every cell of a grid of config values, evaluate each one, and tabulate and plot them.

A grid is one or more axes ``--grid KEY=V1,V2,...`` over any config key; its cells are their cartesian product.
Every cell's config is ``--config`` + overrides + the cell's grid values, read by ``config.from_dict`` as for
``longssm train``, so a bad key or value (or an unknown ``model.family``) is the same one-line error, raised for
every cell before anything is trained.

    DIR/
      sweep.json                  the grid keys of every invocation so far (the columns of the table)
      cells/<values>-<digest>/    one run directory per cell (config.yaml, checkpoints/, final/, metrics.jsonl)
                                  + cell.json (its config; training seconds and peak memory, summed / maxed over
                                  the invocations that trained it) + eval.json (its evaluation)
      results.md, results.json    one row per cell: the grid values, ppl at every L, the verdict, training time,
                                  peak training memory
      ppl_vs_length.png, heatmap_<scheme>.png (loss over training T × evaluation L, LongSSM Fig. 9),
      training.png (training loss and per-layer max |h| of the carried state against the step)

A cell is named by the digest of its resolved config (its ``name`` and ``train.progress`` left out), so a rerun
finds it whatever grid produced it: a finished cell is skipped, an interrupted one resumes from its newest
checkpoint (``train(..., resume="auto")``), and a grid with new values or new keys adds only the cells that are
new. The text files the cells read are tokenized once, before the first cell. Each cell trains in a fresh child
process (``python -m longssm.sweep CELL_DIR``): its peak memory is its
own (CPU: the process's peak RSS; CUDA: ``torch.cuda.max_memory_allocated``), and a run that stops on
non-finite steps (``train.max_bad_steps``) is recorded as failed without stopping the sweep.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import is_complete, latest_checkpoint
from .config import EvalConfig, Overrides, RunConfig, apply_overrides, from_dict, read_config_file, to_dict
from .errors import UserError
from .files import write_text_atomic

UNHASHED = (("name",), ("train", "progress"), ("train", "seeds"))
"""Config entries that do not change what a cell computes: left out of its digest."""
TRAINING_FAILED = 3
"""Exit code of a cell's child process whose training stopped with a ``UserError`` (e.g. non-finite steps)."""


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its values, its resolved config and its run directory."""

    values: dict[str, str]
    """Grid key -> the value as typed, for this invocation's keys."""
    config: RunConfig
    directory: Path

    @property
    def label(self) -> str:
        return values_label(self.values)


def values_label(values: dict[str, Any]) -> str:
    """``{"train.seq_len": 16, "state.scheme": "zero"}`` -> ``"seq_len=16 scheme=zero"``."""
    return " ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in values.items())


# ----------------------------------------------------------------------------------------------------------
# The grid.


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """``["train.seq_len=16,64", "state.scheme=zero,previous"]`` -> ``{"train.seq_len": ["16", "64"], ...}``.

    One-line ``UserError`` for an empty grid, an axis without ``=`` or without values, and a key given twice.
    Keys and values are checked against the config by ``plan_cells``.
    """
    if not specs:
        raise UserError("the grid is empty: give at least one --grid KEY=V1,V2,... (e.g. --grid train.seq_len=16,64)")
    axes: dict[str, list[str]] = {}
    for spec in specs:
        key, eq, text = spec.partition("=")
        key = key.strip().removeprefix("--")
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not eq or not key:
            raise UserError(f"--grid must be KEY=V1,V2,... (e.g. train.seq_len=16,64); got {spec!r}")
        if not values:
            raise UserError(f"--grid {key} has no values: give KEY=V1,V2,...")
        if key in axes:
            raise UserError(f"--grid {key} is given twice: list all its values in one --grid")
        axes[key] = values
    return axes


SEED_KEY = "train.seed"


def with_seeds(axes: dict[str, list[str]], seeds: int | None, config: str | Path | dict[str, Any] | None,
               overrides: Overrides | None) -> dict[str, list[str]]:
    """``axes`` plus the axis ``train.seed`` = the resolved config's seed and the ``seeds`` - 1 after it (None: the
    config's ``train.seeds``); unchanged for one seed. ``UserError`` for ``seeds`` < 1 and for several seeds with
    a grid that varies the seed."""
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds must be >= 1; got {seeds}")
    base = apply_overrides(read_config_file(config) if isinstance(config, (str, Path)) else config or {}, overrides)
    train = from_dict(RunConfig, base).train
    seeds = train.seeds if seeds is None else seeds
    if seeds == 1:
        return axes
    if SEED_KEY in axes:
        raise UserError(f"--seeds {seeds} (or train.seeds) and --grid {SEED_KEY} both set the seeds: give one of "
                        f"them")
    return {**axes, SEED_KEY: [str(train.seed + i) for i in range(seeds)]}


def config_digest(cfg: RunConfig) -> str:
    """Hex digest of the resolved config without the entries of ``UNHASHED``."""
    data = to_dict(cfg)
    for path in UNHASHED:
        section = data
        for part in path[:-1]:
            section = section[part]
        section.pop(path[-1])
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def plan_cells(config: str | Path | dict[str, Any] | None, overrides: Overrides | None, axes: dict[str, list[str]],
               out: Path) -> list[Cell]:
    """Every cell of the grid, its config resolved and checked, in grid order (the last key varies fastest).

    ``config``: a YAML file or shipped config's name, or a config dict; ``overrides`` apply to every cell (see
    ``config.Overrides``), the grid values after them. A cell whose config digest is already in ``out/cells``
    keeps that directory."""
    from .models.registry import get_family

    base = apply_overrides(read_config_file(config) if isinstance(config, (str, Path)) else config or {}, overrides)
    cells = []
    for combination in itertools.product(*axes.values()):
        values = dict(zip(axes, combination))
        cfg = from_dict(RunConfig, apply_overrides(base, values))
        get_family(cfg.model.family)  # a name only the registry knows: fails now, not after the first cells
        slug = "_".join(f"{key.rsplit('.', 1)[-1]}-{re.sub(r'[^A-Za-z0-9.+-]', '', value)}"
                        for key, value in values.items())
        digest = config_digest(cfg)[:10]
        existing = sorted((out / "cells").glob(f"*-{digest}"))
        directory = existing[0] if existing else out / "cells" / f"{slug}-{digest}"
        cfg.name = f"{cfg.name}-{slug}"
        cells.append(Cell(values, cfg, directory))
    if len({c.directory for c in cells}) < len(cells):
        raise UserError("two cells of the grid have the same config: a --grid key repeats a value or does not "
                        "change the run")
    return cells


# ----------------------------------------------------------------------------------------------------------
# Running it.


def sweep(config: str | Path | dict[str, Any] | None, grid: list[str], out: str | Path, eval_cfg: EvalConfig,
          overrides: Overrides | None = None, progress: bool = True, seeds: int | None = None) -> dict[str, Any]:
    """Train and evaluate every cell not done yet, then write the results of every cell in ``out``.

    ``seeds`` (None: the config's ``train.seeds``) > 1: every cell is trained with ``seeds`` values of ``train.seed``
    (the config's seed and the next ones), as if ``--grid train.seed=...`` had been given, and the results
    aggregate them (``aggregate_seeds``).
    Returns ``{"rows": [...], "files": [paths written]}`` (rows as in ``results.json``).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; a sweep writes a directory")
    axes = with_seeds(parse_grid(grid), seeds, config, overrides)
    cells = plan_cells(config, overrides, axes, out)
    tokenize_once([c for c in cells if not is_complete(c.directory / "final")], progress)
    out.mkdir(parents=True, exist_ok=True)
    keys = record_grid_keys(out, list(axes))
    to_train = [c for c in cells if not is_complete(c.directory / "final") and not read_cell(c.directory).get("failed")]
    log(f"{len(cells)} cells, {len(cells) - len(to_train)} already trained; results in {out}")
    started, trained = time.perf_counter(), 0
    for n, cell in enumerate(cells, start=1):
        if cell in to_train:
            eta = ""
            if trained:
                eta = f", ETA {(time.perf_counter() - started) / trained * (len(to_train) - trained) / 60:.1f} min"
            log(f"cell {n}/{len(cells)} ({trained}/{len(to_train)} trained{eta}): {cell.label} -> {cell.directory}")
            train_cell(cell, progress)
            trained += 1
        evaluate_cell(cell.directory, eval_cfg, progress)
    rows = collect_rows(out, keys, axes)
    files = write_results(out, rows, keys)
    log(f"done: {len(rows)} cells in {out / 'results.md'}")
    return {"rows": rows, "files": files}


def log(message: str) -> None:
    print(f"[sweep] {message}", file=sys.stderr, flush=True)


def tokenize_once(cells: list[Cell], progress: bool) -> None:
    """Prepare the text files the cells train and validate on (``load_corpus``'s cache) here, once per (file,
    tokenizer), so that no cell's training time or peak memory includes tokenizing the corpus for the others."""
    from .data.corpus import load_corpus
    from .data.tokenizer import load_tokenizer

    seen: set[tuple[str, str, str | None]] = set()
    for cell in cells:
        data = cell.config.data
        read = [(data.train, "train")] + ([(data.valid, "valid")] if cell.config.train.eval_every else [])
        for spec, role in read:
            key = (spec, data.tokenizer, data.cache_dir)
            if key not in seen:
                seen.add(key)
                load_corpus(spec, load_tokenizer(data.tokenizer), data.cache_dir, progress=progress, role=role)


def record_grid_keys(out: Path, keys: list[str]) -> list[str]:
    """Add ``keys`` to the grid keys in ``out/sweep.json``; returns all of them, first seen first."""
    path = out / "sweep.json"
    known = json.loads(path.read_text())["grid_keys"] if path.is_file() else []
    known += [k for k in keys if k not in known]
    write_text_atomic(path, json.dumps({"grid_keys": known}, indent=1) + "\n")
    return known


def read_cell(directory: Path) -> dict[str, Any]:
    """``cell.json`` of a cell directory, ``{}`` before it exists."""
    path = directory / "cell.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def train_cell(cell: Cell, progress: bool) -> None:
    """Train (or resume) the cell in a child process; add its seconds and peak memory to ``cell.json``.

    A training that stops on its own (``UserError``: non-finite steps, ...) is recorded as ``failed`` and the
    sweep goes on; a crash or a kill of the child stops the sweep (rerun it to resume the cell; the seconds and
    memory of the killed part are not counted)."""
    cell.directory.mkdir(parents=True, exist_ok=True)
    record = read_cell(cell.directory)
    config = to_dict(cell.config)
    config["train"]["progress"] = progress
    record["config"] = config
    resumed = latest_checkpoint(cell.directory)
    if resumed is not None:
        log(f"resuming {cell.directory.name} from {resumed.name}")
    write_text_atomic(cell.directory / "cell.json", json.dumps(record, indent=1) + "\n")
    proc = subprocess.run([sys.executable, "-m", "longssm.sweep", str(cell.directory)], stdout=subprocess.PIPE,
                          text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode not in (0, TRAINING_FAILED) or not lines:
        raise UserError(f"training of cell {cell.directory} failed (exit code {proc.returncode}); rerun the same "
                        f"command to resume it from its last checkpoint")
    stats = json.loads(lines[-1])
    record["train_seconds"] = round(record.get("train_seconds", 0.0) + stats["seconds"], 1)
    record["train_peak_mb"] = max(record.get("train_peak_mb", 0.0), stats["peak_mb"])
    record["memory"] = stats["memory"]
    if "error" in stats:
        record["failed"] = stats["error"]
        log(f"cell {cell.directory.name} failed: {stats['error']}")
    write_text_atomic(cell.directory / "cell.json", json.dumps(record, indent=1) + "\n")


def train_cell_process(directory: Path) -> int:
    """Child process: train ``directory/cell.json``'s config into ``directory`` (resuming from its newest
    checkpoint) and print ``{"seconds", "peak_mb", "memory"[, "error"]}`` as the last line of stdout.

    Returns the exit code: 0, or ``TRAINING_FAILED`` when the training stopped with a ``UserError``."""
    import torch

    from .runtime.device import resolve_device
    from .train import train

    cfg = from_dict(RunConfig, read_cell(directory)["config"])
    device = resolve_device(cfg.train.device)
    started = time.perf_counter()
    stats: dict[str, Any] = {}
    try:
        train(cfg, directory, resume="auto")
    except UserError as e:
        stats["error"] = str(e)
    stats["seconds"] = time.perf_counter() - started
    if device.type == "cuda":
        stats.update(peak_mb=torch.cuda.max_memory_allocated(device) / 2**20, memory="cuda_max_memory_allocated")
    else:
        stats.update(peak_mb=peak_rss_mb(), memory="process_peak_rss")
    print(json.dumps(stats), flush=True)
    return TRAINING_FAILED if "error" in stats else 0


def peak_rss_mb() -> float | None:
    """This process's peak resident set size in MB (Linux ``VmHWM``, which starts afresh at ``exec``), else None."""
    status = Path("/proc/self/status")
    match = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.M) if status.is_file() else None
    return int(match.group(1)) / 1024 if match else None


def evaluate_cell(directory: Path, eval_cfg: EvalConfig, progress: bool) -> None:
    """Evaluate a trained cell into ``eval.json``, unless it holds an evaluation with the same settings."""
    from .evaluate.run import evaluate_run, write_outputs

    record = read_cell(directory)
    settings = to_dict(eval_cfg)
    if record.get("failed") or not is_complete(directory / "final"):
        return
    previous = directory / "eval.json"
    if previous.is_file() and json.loads(previous.read_text()).get("sweep_eval") == settings:
        return
    result = evaluate_run(directory, eval_cfg, progress=progress)
    result["sweep_eval"] = settings
    write_outputs(result, previous, force=True)  # the cell directory is the sweep's own


# ----------------------------------------------------------------------------------------------------------
# Results.


def dotted_value(config: dict[str, Any], key: str) -> Any:
    """``config["train"]["seq_len"]`` for ``"train.seq_len"``."""
    for part in key.split("."):
        config = config[part]
    return config


def collect_rows(out: Path, keys: list[str], axes: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One row per cell directory of ``out``: ``{"cell", "values", "ppl_vs_length", "verdict", "train_seconds",
    "train_peak_mb", "memory", "failed", "result"}``, sorted by their grid values (``_sort_key``): numbers by
    value, other values in the order of ``axes`` (this invocation's grid), values not in it after them."""
    from .evaluate.report import verdict_of

    rows = []
    for directory in sorted((out / "cells").iterdir()) if (out / "cells").is_dir() else []:
        record = read_cell(directory)
        if not record:
            continue
        result = json.loads((directory / "eval.json").read_text()) if (directory / "eval.json").is_file() else {}
        ppl = result.get("ppl_vs_length", {})
        rows.append({
            "cell": directory.name,
            "values": {key: dotted_value(record["config"], key) for key in keys},
            "ppl_vs_length": ppl,
            "verdict": verdict_of({**result, "train_seq_len": record["config"]["train"]["seq_len"]}) if ppl else None,
            "train_seconds": record.get("train_seconds"),
            "train_peak_mb": record.get("train_peak_mb"),
            "memory": record.get("memory"),
            "failed": record.get("failed"),
            "result": result,
        })
    return sorted(rows, key=lambda r: [_sort_key(r["values"][k], axes.get(k, [])) for k in keys])


def _sort_key(value: Any, given: list[str]) -> tuple[int, float, str]:
    """Numbers by value (T = 16 before 1024, whichever command added them), then the other values by their
    position in ``given`` (values as typed), then as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    if str(value) in given:
        return (1, given.index(str(value)), "")
    return (2, 0.0, str(value))


def aggregate_seeds(rows: list[dict[str, Any]], keys: list[str],
                    confidence: float = 0.95) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows that differ only in ``train.seed`` merged into one (when some cell has several seeds), and the grid
    keys without ``train.seed``; else ``rows``, ``keys`` unchanged.

    A merged row: ``values``, ``seeds``, ``cells``, ``ppl_vs_length`` (the mean over the seeds evaluated at every
    L), ``ppl_seeds`` ({L: per-seed ppl}), ``ppl_ci`` ({L: ``stats.t_interval``}), ``verdict`` (over seeds:
    ``report.length_extension_verdict``), ``train_seconds`` (mean), ``train_peak_mb`` (max), ``memory``, ``failed``
    (the first failure) and ``result`` (for the plots: the mean curve with its band)."""
    from .evaluate.report import length_extension_verdict
    from .stats import t_interval

    if SEED_KEY not in keys:
        return rows, keys
    others = [k for k in keys if k != SEED_KEY]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(json.dumps(row["values"][k]) for k in others), []).append(row)
    if all(len(g) == 1 for g in groups.values()):
        return rows, keys
    merged = []
    for group in groups.values():
        evaluated = [r for r in group if r["ppl_vs_length"]]
        lengths = sorted(set.intersection(*(set(r["ppl_vs_length"]) for r in evaluated)), key=int) if evaluated else []
        per_seed = {L: [r["ppl_vs_length"][L] for r in evaluated] for L in lengths}
        ci = {L: t_interval(v, confidence) for L, v in per_seed.items()}
        mean = {L: c["mean"] for L, c in ci.items()}
        T = group[0]["result"].get("train_seq_len") if evaluated else None
        first = evaluated[0]["result"] if evaluated else {}
        band = {L: [c["mean"] - c["half_width"], c["mean"] + c["half_width"]]
                for L, c in ci.items() if c["half_width"] is not None}
        seconds = [r["train_seconds"] for r in group if r.get("train_seconds") is not None]
        verdict = length_extension_verdict(mean, T, confidence=confidence, seeds=per_seed) if mean else None
        merged.append({
            "values": {k: group[0]["values"][k] for k in others}, "seeds": [r["values"][SEED_KEY] for r in group],
            "cells": [r["cell"] for r in group], "ppl_vs_length": mean, "ppl_seeds": per_seed, "ppl_ci": ci,
            "verdict": verdict["verdict"] if verdict else None,
            "train_seconds": sum(seconds) / len(seconds) if seconds else None,
            "train_peak_mb": max((r["train_peak_mb"] for r in group if r.get("train_peak_mb")), default=None),
            "memory": group[0].get("memory"), "failed": next((r["failed"] for r in group if r.get("failed")), None),
            "result": {k: first.get(k) for k in ("family", "scheme", "train_seq_len")} | {
                "name": values_label({k: group[0]["values"][k] for k in others}), "ppl_vs_length": mean,
                "ppl_seeds": per_seed, "ppl_band": band, "length_extension": verdict},
        })
    return merged, others


def write_results(out: Path, rows: list[dict[str, Any]], keys: list[str]) -> list[Path]:
    """``results.md``, ``results.json`` and the plots; returns the paths written. With several seeds per cell the
    table, the plots and the zero-vs-previous sentence are of the seed-aggregated rows (``aggregate_seeds``: mean ±
    the t interval's half-width), followed by the table of every seed."""
    from .evaluate.plots import plot_ppl_vs_length, plot_sweep_heatmap, plot_training
    from .evaluate.report import sweep_table, zero_state_matches

    for row in rows:
        row["result"]["name"] = values_label(row["values"])
    merged, merged_keys = aggregate_seeds(rows, keys)
    results = [r["result"] for r in merged if r["ppl_vs_length"]]
    matches = zero_state_matches(results)
    tables = [sweep_table(merged, merged_keys)]
    if merged is not rows:
        tables.append(f"Every seed:\n\n{sweep_table(rows, keys)}")
    (out / "results.md").write_text("\n\n".join([*tables[:1], *(m["text"] for m in matches), *tables[1:]]) + "\n")
    summary = {"grid_keys": keys, "zero_state_matches": matches,
               "rows": [{k: v for k, v in r.items() if k != "result"} for r in rows]}
    if merged is not rows:
        summary["seed_rows"] = [{k: v for k, v in r.items() if k != "result"} for r in merged]
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    files = [out / "results.md", out / "results.json"]
    if results:
        files.append(plot_ppl_vs_length(results, out / "ppl_vs_length.png", title="Perplexity vs evaluation length"))
        for scheme in sorted({str(r["scheme"]) for r in results}):
            same_scheme = [r for r in results if r["scheme"] == scheme]
            files.append(plot_sweep_heatmap(same_scheme, out / f"heatmap_{scheme}.png",
                                            title=f"Loss (nats/token) over training T × evaluation L, {scheme} state"))
    histories = {values_label(r["values"]): out / "cells" / r["cell"] / "metrics.jsonl" for r in rows}
    files.append(plot_training(histories, out / "training.png"))
    return files


def main(argv: list[str] | None = None) -> int:
    """``python -m longssm.sweep CELL_DIR``: the child process of one cell (see ``train_cell_process``)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m longssm.sweep CELL_DIR (started by longssm sweep)", file=sys.stderr)
        return 2
    return train_cell_process(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
