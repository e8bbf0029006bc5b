"""Plots a person reads: log2 x axis, the training length marked, one line per run (name, family, scheme; runs
whose labels collide are told apart by their directory: ``report.with_unique_labels``).

Every ``plot_*`` takes eval result dicts (``longssm eval --json`` files), writes the figure (any format matplotlib
writes, chosen by the file name: ``.png``, ``.pdf``, ``.svg``, ...) and the plotted numbers beside it (``.csv``; the
heatmap also ``.json``), and returns the figure's path.

Figures are built with matplotlib's object API (``Figure``, never pyplot): importing this module or plotting
never changes the user's matplotlib backend.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..data.tasks import EVAL_TASKS
from ..errors import UserError
from .report import Result, run_label, sweep_grid, verdict_of, with_unique_labels

DPI = 120
COLOURS = [f"C{i}" for i in range(10)]
"""matplotlib's default colour cycle, by name."""


def check_plot_path(out: str | Path) -> Path:
    """``out`` as a Path; ``UserError`` unless its extension is a format matplotlib writes (call it before any
    computation whose result would be lost)."""
    out = Path(out)
    formats = Figure().canvas.get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in formats:
        raise UserError(f"cannot write a plot to {out}: the file name must end in one of "
                        f"{', '.join('.' + f for f in sorted(formats))}")
    return out


def _runs_with(metric: str, results: list[Result], out: str | Path) -> tuple[list[Result], Path]:
    """The results that hold ``metric`` (labelled: ``with_unique_labels`` of all ``results``), and the checked
    figure path."""
    return [r for r in with_unique_labels(results) if r.get(metric)], check_plot_path(out)


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Figure, np.ndarray]:
    """A figure (inches) and its axes as an (nrows, ncols) array."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _train_lengths(results: Iterable[Result]) -> list[int]:
    return sorted({int(r["train_seq_len"]) for r in results if r.get("train_seq_len")})


def _log2_axes(ax: Axes, xlabel: str, ylabel: str, train_lengths: Iterable[int], legend: bool = True) -> None:
    """The axes of every line plot: log2 x axis, labels, grid, a dashed line at each training length T, and a
    legend when something is labelled."""
    for T in train_lengths:
        ax.axvline(T, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"train T={T}", (T, 1), xycoords=("data", "axes fraction"), xytext=(2, -4),  # vertical: T
                    textcoords="offset points", fontsize=8, color="grey", rotation=90, va="top")  # may be close
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    if legend and handles:
        if len(handles) > 8:  # beside the axes: inside, a long legend hides the curves
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        else:
            ax.legend(fontsize=7, ncol=2 if len(handles) > 6 else 1)


def line_styles(results: list[Result]) -> list[dict[str, Any]]:
    """Matplotlib styles for one line per result: with several families, the colour tells the family and the
    linestyle the result's rank among its family's (solid, dashed, dotted, dash-dot: the legend names each);
    else, with several state schemes, the linestyle tells the scheme and the colour the rank of the result among
    its scheme's results (in a sweep sorted by T, the same colour is the same T); with one scheme, one colour per
    result. Up to 20 colours."""
    families = list(dict.fromkeys(str(r.get("family")) for r in results))
    if len(families) > 1:
        colors = colormaps["tab10" if len(families) <= 10 else "tab20"].colors
        within: dict[str, int] = {}
        styles = []
        for r in results:
            family = str(r.get("family"))
            rank = within[family] = within.get(family, -1) + 1
            styles.append({"color": colors[families.index(family) % len(colors)],
                           "linestyle": ["-", "--", ":", "-."][rank % 4]})
        return styles
    schemes = list(dict.fromkeys(str(r.get("scheme")) for r in results))
    seen: dict[str, int] = {}  # results of each scheme so far: a result's rank among its scheme's
    ranks = []
    for r in results:
        key = str(r.get("scheme"))
        ranks.append(seen.get(key, 0))
        seen[key] = ranks[-1] + 1
    palette = "tab10" if max(ranks, default=0) < 10 else "tab20"
    dashes = ["-", "--", ":", "-."]
    colors = colormaps[palette].colors
    return [{"color": colors[rank % len(colors)],
             "linestyle": dashes[schemes.index(str(r.get("scheme"))) % len(dashes)]}
            for r, rank in zip(results, ranks)]


def _save(fig: Figure, out: Path, title: str, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """Title the figure, write it to ``out`` and the plotted numbers to ``out`` with suffix ``.csv``."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return out


def _boundary_below(lengths: list[int], T: int) -> float:
    """x of the boundary between the grid columns (``lengths``) shorter than training length T and the others."""
    return sum(1 for x in lengths if x < T) - 0.5


def _annotated_grid(fig: Figure, ax: Axes, grid: list[list[float]], columns: list[str], rows: list[str],
                    cmap: str, origin: str, vmin: float | None = None, vmax: float | None = None) -> None:
    """A heatmap (``origin``: where row 0 goes, "upper" or "lower") with its value written in every (non-NaN)
    cell, tick labels and a colour bar."""
    image = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin=origin)
    ax.set_xticks(range(len(columns)), columns, rotation=45, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for a, row in enumerate(grid):
        for b, value in enumerate(row):
            if not math.isnan(value):
                ax.text(b, a, f"{value:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(image, ax=ax, fraction=0.046)


def finite_points(curve: dict[str, float]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """A ``ppl_vs_length`` curve ({"16": ppl, ...}) as (length, ppl) points sorted by length: (the finite ones, the
    others: inf, nan)."""
    points = sorted((int(k), float(v)) for k, v in curve.items())
    return [p for p in points if math.isfinite(p[1])], [p for p in points if not math.isfinite(p[1])]


def _band(result: Result, xs: list[int]) -> tuple[list[float], list[float]] | None:
    """The interval around a curve at ``xs``: a seed-aggregated row's ``ppl_band`` (mean ± t half-width), else an
    evaluation's ``ppl_interval`` (bootstrap); None without one, or where a bound is missing or not finite."""
    band = result.get("ppl_band") or {str(k): [v["low"], v["high"]]
                                      for k, v in (result.get("ppl_interval") or {}).get("intervals", {}).items()}
    bounds = [band.get(str(x)) for x in xs]
    if not bounds or any(b is None or not all(math.isfinite(v) for v in b) for b in bounds):
        return None
    return [b[0] for b in bounds], [b[1] for b in bounds]


def plot_ppl_vs_length(results: list[Result], out: str | Path, title: str | None = None) -> Path:
    """Perplexity vs evaluation length, one line per result, labelled with its length-extension verdict, with a
    band where the result has an interval (over seeds, or over the evaluated text).

    Perplexities that are not finite (a diverged model: inf, nan) are left out, with one warning line on stderr
    naming them; a result with no finite perplexity is a ``UserError``."""
    runs, out = _runs_with("ppl_vs_length", results, out)
    curves = {run_label(r): finite_points(r["ppl_vs_length"]) for r in runs}
    empty = [label for label, (finite, _) in curves.items() if not finite]
    if empty:
        raise UserError(f"no finite perplexity to plot for {', '.join(empty)} (every ppl_vs_length value is inf or "
                        f"nan)")
    left_out = {label: others for label, (_, others) in curves.items() if others}
    if left_out:
        print("warning: perplexities that are not finite are not plotted: " + "; ".join(
            f"{label} at " + ", ".join(f"L={x} ({y})" for x, y in others) for label, others in left_out.items()),
            file=sys.stderr)
    fig, axes = _figure(9.5 if len(runs) > 8 else 7, 4.5)
    ax, rows = axes[0, 0], []
    for res, style in zip(runs, line_styles(runs)):
        label = run_label(res)
        xs, ys = [x for x, _ in curves[label][0]], [y for _, y in curves[label][0]]
        verdict = verdict_of(res)
        (line,) = ax.plot(xs, ys, marker="o", markersize=3.5,
                          label=f"{label}: {verdict}" if verdict != "n/a" else label, **style)
        band = _band(res, xs)
        if band is not None:
            ax.fill_between(xs, band[0], band[1], color=line.get_color(), alpha=0.18, linewidth=0)
        rows += [(label, x, y) for x, y in zip(xs, ys)]
    values = [row[2] for row in rows]
    if max(values) > 4 * min(values):  # one diverging curve would flatten every other on a linear axis
        ax.set_yscale("log")
    low, high = min(values), max(values)  # the lines set the axis; a band wider than them is cut at its edge
    ax.set_ylim(low / 1.05 if ax.get_yscale() == "log" else low - 0.05 * (high - low or 1),
                high * 1.05 if ax.get_yscale() == "log" else high + 0.05 * (high - low or 1))
    _log2_axes(ax, "evaluation length L (tokens)", "perplexity (per token)", _train_lengths(results))
    return _save(fig, out, title or "Perplexity vs evaluation length (zero initial state per sequence)",
                 ["run", "length", "ppl"], rows)


def plot_position_ppl(results: list[Result], out: str | Path, title: str | None = None) -> Path:
    """Loss at each position of long sequences: the fine log-binned curve (line) and the octave bins (dots)."""
    runs, out = _runs_with("position_ppl", results, out)
    fig, axes = _figure(7, 4.5)
    ax, rows = axes[0, 0], []
    for res in runs:
        pos, label = res["position_ppl"], run_label(res)
        xs, ys = [c["context"] for c in pos["curve"]], [c["loss"] for c in pos["curve"]]
        (line,) = ax.plot(xs, ys, linewidth=1.2, label=f"{label}, L={pos['length']}")
        bx = [math.sqrt(b["lo"] * b["hi"]) for b in pos["bins"]]
        ax.plot(bx, [b["loss"] for b in pos["bins"]], "o", color=line.get_color(), markersize=3.5)
        rows += [(label, "curve", x, y) for x, y in zip(xs, ys)]
        rows += [(label, f"bin {b['lo']}-{b['hi']}", x, b["loss"]) for x, b in zip(bx, pos["bins"])]
    _log2_axes(ax, "position in the sequence (tokens of context)", "loss (nats per token)", _train_lengths(results))
    return _save(fig, out, title or "Position-wise loss (line: fine log bins, dots: octave bins)",
                 ["run", "kind", "context", "loss"], rows)


def plot_effective_remembrance(results: list[Result], out: str | Path, title: str | None = None) -> Path:
    """EffRem_T(t) against t (left; t = 0 drawn at 1/2) and against the kept context T − t (right), both log2;
    the right panel marks the training length."""
    runs, out = _runs_with("effective_remembrance", results, out)
    fig, axes = _figure(11, 4.5, 1, 2)
    (by_start, by_kept), rows = axes[0], []
    for res in runs:
        er = res["effective_remembrance"]
        label = f"{run_label(res)}, T={er['T']}"
        (line,) = by_start.plot([t if t > 0 else 0.5 for t in er["t"]], er["effrem"], marker="o", markersize=3,
                                label=label)
        by_kept.plot([er["T"] - t for t in er["t"]], er["effrem"], marker="o", markersize=3, color=line.get_color())
        rows += [(run_label(res), er["T"], t, v) for t, v in zip(er["t"], er["effrem"])]
    _log2_axes(by_start, "t: tokens dropped from the start (t = 0 drawn at 0.5)",
               "EffRem_T(t) = TV(q(·|x[0:T]), q(·|x[t:T]))", ())
    _log2_axes(by_kept, "T − t: context kept", "", _train_lengths(results))
    for ax in (by_start, by_kept):
        ax.set_ylim(-0.02, 1.02)
    return _save(fig, out, title or "Effective Remembrance (0: the dropped tokens no longer matter)",
                 ["run", "T", "t", "effrem"], rows)


def plot_passkey(results: list[Result], out: str | Path, title: str | None = None) -> Path:
    """Length × depth accuracy grid per run: greedy exact match (left) and ranked vs distractors (right)."""
    runs, out = _runs_with("passkey", results, out)
    fig, axes = _figure(10, 3.2 * max(1, len(runs)), max(1, len(runs)), 2)
    rows = []
    for res, ax_row in zip(runs, axes):
        pk, label = res["passkey"], run_label(res)
        lengths, depths = [str(x) for x in pk["lengths"]], [str(d) for d in pk["depths"]]
        scores = (("accuracy", "greedy exact match", pk["chance"]),
                  ("ranked_accuracy", f"ranked vs {pk['distractors']} distractors", pk["ranked_chance"]))
        for ax, (score, name, chance) in zip(ax_row, scores):
            grid = [[pk[score][L][d] for L in lengths] for d in depths]
            _annotated_grid(fig, ax, grid, lengths, depths, "viridis", "lower", vmin=0, vmax=1)
            ax.set_xlabel("context length L (tokens, log2 spaced)")
            ax.set_ylabel("needle depth")
            ax.set_title(f"{label}\n{name} (chance {chance:.3g})", fontsize=8)
            if res.get("train_seq_len"):  # a line between the lengths < T and the others
                boundary = _boundary_below(pk["lengths"], int(res["train_seq_len"]))
                if -0.5 < boundary < len(lengths) - 0.5:
                    ax.axvline(boundary, color="white", linestyle="--", linewidth=1)
            rows += [(label, score, L, d, pk[score][L][d]) for d in depths for L in lengths]
    return _save(fig, out, title or "Passkey retrieval", ["run", "score", "length", "depth", "accuracy"], rows)


def plot_task(metric: str) -> Callable[[list[Result], str | Path, str | None], Path]:
    """The plot of a long-context task metric (``evaluate/tasks.py``): accuracy over length × the task's axis, one
    panel per run, with a line at the training length."""

    def plot(results: list[Result], out: str | Path, title: str | None = None) -> Path:
        runs, out = _runs_with(metric, results, out)
        fig, axes = _figure(5.5, 3.2 * max(1, len(runs)), max(1, len(runs)), 1)
        rows = []
        for res, ax_row in zip(runs, axes):
            t, label, ax = res[metric], run_label(res), ax_row[0]
            lengths, values = [str(x) for x in t["lengths"]], list(next(iter(t["accuracy"].values())))
            grid = [[t["accuracy"][L][v] for L in lengths] for v in values]
            _annotated_grid(fig, ax, grid, lengths, values, "viridis", "lower", vmin=0, vmax=1)
            ax.set_xlabel("length L (tokens)")
            ax.set_ylabel(t["axis"])
            ax.set_title(f"{label}\n{metric}: answers right (chance {t['chance']:.2g})", fontsize=8)
            if res.get("train_seq_len"):
                boundary = _boundary_below(t["lengths"], int(res["train_seq_len"]))
                if -0.5 < boundary < len(lengths) - 0.5:
                    ax.axvline(boundary, color="white", linestyle="--", linewidth=1)
            rows += [(label, L, v, t["accuracy"][L][v], t["answers"][L][v]) for v in values for L in lengths]
        return _save(fig, out, title or f"{metric} accuracy", ["run", "length", t["axis"], "accuracy", "answers"],
                     rows)

    return plot


def plot_state_stats(results: list[Result], out: str | Path, title: str | None = None) -> Path:
    """Per state tensor: mean ‖h‖ (solid) and max |h| (dotted) vs position, one panel per run, log-log."""
    runs, out = _runs_with("state_stats", results, out)
    fig, axes = _figure(6.5 * max(1, len(runs)), 4.5, 1, max(1, len(runs)))
    rows = []
    for res, ax in zip(runs, axes[0]):
        st, label = res["state_stats"], run_label(res)
        xs = st["positions"]
        for key, v in st["keys"].items():
            (line,) = ax.plot(xs, v["norm"], label=f"{key} mean ‖h‖")
            ax.plot(xs, v["max_abs"], linestyle=":", color=line.get_color(), label=f"{key} max |h|")
            rows += [(label, key, x, a, b, c) for x, a, b, c in zip(xs, v["norm"], v["mean_abs"], v["max_abs"])]
        ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        _log2_axes(ax, "position (tokens consumed)", "state magnitude", _train_lengths([res]))
    return _save(fig, out, title or "Recurrent state by position (zero initial state)",
                 ["run", "key", "position", "norm", "mean_abs", "max_abs"], rows)


def plot_sweep_heatmap(results: list[Result], out: str | Path, title: str | None = None) -> Path:
    """Loss over (run sorted by training T × eval L), LongSSM Fig. 9; the verdict is written beside each row and
    the training length outlined in red. Also writes the grid as ``.json``."""
    out = check_plot_path(out)
    data = sweep_grid(results)
    lengths = data["lengths"]
    grid = [[math.nan if v is None else v for v in row] for row in data["loss"]]
    fig, axes = _figure(4.0 + 0.6 * len(lengths), 1.2 + 0.45 * len(grid))
    ax = axes[0, 0]
    _annotated_grid(fig, ax, grid, [str(x) for x in lengths],
                    [f"{r['label']}, T={r['train_seq_len']}: {r['verdict']}" for r in data["rows"]], "viridis_r",
                    "upper")
    for a, row in enumerate(data["rows"]):
        T = int(row["train_seq_len"] or 0)
        if T in lengths:  # outline the cell L = T
            ax.add_patch(Rectangle((lengths.index(T) - 0.5, a - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        elif T:  # T between two evaluation lengths: a bar between them
            boundary = _boundary_below(lengths, T)
            ax.plot([boundary, boundary], [a - 0.5, a + 0.5], color="red", linewidth=2)
    ax.set_xlabel("evaluation length L (tokens, log2 spaced); red: training T")
    path = _save(fig, out, title or "Loss (nats/token) over training T × evaluation L",
                 ["run", "train_seq_len", "verdict", "length", "loss"],
                 [(r["label"], r["train_seq_len"], r["verdict"], x, v) for r, row in zip(data["rows"], data["loss"])
                  for x, v in zip(lengths, row)])
    path.with_suffix(".json").write_text(json.dumps(data, indent=1))
    return path


def plot_training(histories: dict[str, Path], out: str | Path, title: str | None = None) -> Path:
    """Training loss (left) and each state tensor's max |h| at the end of the logged step (right, log y) against
    the step, one colour per run: the state norms show a previous-state run diverging (LongSSM Fig. 7).

    ``histories``: label -> the run's ``metrics.jsonl`` (missing files are skipped)."""
    out = check_plot_path(out)
    fig, axes = _figure(12, 4.5, 1, 2)
    (loss_ax, state_ax), rows = axes[0], []
    for (label, path), colour in zip(histories.items(), itertools.cycle(COLOURS)):
        records = [json.loads(line) for line in Path(path).read_text().splitlines()] if Path(path).is_file() else []
        logged = [r for r in records if r.get("loss") is not None]
        loss_ax.plot([r["step"] for r in logged], [r["loss"] for r in logged], color=colour, label=label)
        for key in sorted({k for r in logged for k in r.get("state_max_abs", {})}):
            points = [(r["step"], r["state_max_abs"][key]) for r in logged if key in r.get("state_max_abs", {})]
            state_ax.plot(*zip(*points), color=colour, linewidth=1, alpha=0.8)
            rows += [(label, key, step, None, value) for step, value in points]
        rows += [(label, "loss", r["step"], r["loss"], None) for r in logged]
    loss_ax.set(xlabel="step", ylabel="training loss (nats/token)")
    state_ax.set(xlabel="step", ylabel="max |h| of each layer's carried state", yscale="log")
    for ax in (loss_ax, state_ax):
        ax.grid(True, alpha=0.3)
    if histories:
        loss_ax.legend(fontsize=7, ncol=2 if len(histories) > 6 else 1)
    return _save(fig, out, title or "Training: loss and state magnitude (one line per layer)",
                 ["run", "series", "step", "loss", "state_max_abs"], rows)


PLOTTERS = {
    "ppl_vs_length": plot_ppl_vs_length,
    "position_ppl": plot_position_ppl,
    "effective_remembrance": plot_effective_remembrance,
    "passkey": plot_passkey,
    "state_stats": plot_state_stats,
    **{name: plot_task(name) for name in EVAL_TASKS},
}
"""Metric -> its plot, written as ``<metric>.png``."""


def plot_all(results: list[Result], out_dir: str | Path, heatmap: bool) -> list[Path]:
    """Every plot the results have data for, into ``out_dir``, and the sweep heatmap when ``heatmap``."""
    out_dir, results = Path(out_dir), with_unique_labels(results)
    written = [plot(results, out_dir / f"{metric}.png") for metric, plot in PLOTTERS.items()
               if any(r.get(metric) for r in results)]
    with_ppl = [r for r in results if r.get("ppl_vs_length")]
    if heatmap and with_ppl:
        written.append(plot_sweep_heatmap(with_ppl, out_dir / "sweep_heatmap.png"))
    return written
