"""Plots a person reads: log2 x axis, the training length marked, one line per run (name, family, scheme).

Every ``plot_*`` writes a PNG and the plotted numbers beside it (``.csv``; the heatmap also ``.json``) and
returns the PNG path. Inputs are eval result dicts (``longssm eval --json`` files).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .sweep import length_extension_verdict, sweep_grid  # noqa: E402

Result = dict[str, Any]


def run_label(result: Result) -> str:
    """``"name (family, scheme)"``, leaving out parts the name already contains."""
    name = result.get("name") or Path(str(result.get("run", "run"))).name
    extra = ", ".join(str(x) for x in (result.get("family"), result.get("scheme")) if x and str(x) not in str(name))
    return f"{name} ({extra})" if extra else str(name)


def _train_lengths(results: list[Result]) -> list[int]:
    return sorted({int(r["train_seq_len"]) for r in results if r.get("train_seq_len")})


def _mark_train(ax, lengths: list[int]) -> None:
    for T in lengths:
        ax.axvline(T, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"train T={T}", (T, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8, color="grey")


def _finish(fig, ax, out: Path, xlabel: str, ylabel: str, title: str, legend: bool = True) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def plot_ppl_vs_length(results: list[Result], out: str | Path, title: str | None = None) -> Path:
    """Perplexity vs evaluation length, one line per result; writes PNG and CSV."""
    out = Path(out)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    rows = []
    for res in results:
        curve = res.get("ppl_vs_length")
        if not curve:
            continue
        xs = sorted(int(k) for k in curve)
        ys = [curve[str(x)] for x in xs]
        label = run_label(res)
        verdict = length_extension_verdict(curve, res.get("train_seq_len"))["verdict"]
        ax.plot(xs, ys, marker="o", markersize=3.5, label=f"{label}: {verdict}" if verdict != "n/a" else label)
        rows += [(label, x, y) for x, y in zip(xs, ys)]
    _mark_train(ax, _train_lengths(results))
    _finish(fig, ax, out, "evaluation length L (tokens)", "perplexity (per token)",
            title or "Perplexity vs evaluation length (zero initial state per sequence)")
    _write_csv(out.with_suffix(".csv"), ["run", "length", "ppl"], rows)
    return out


def plot_position_ppl(results: list[Result], out: str | Path, title: str | None = None) -> Path:
    """Loss at each position (log-binned curve) of long sequences; CSV holds the curve and the octave bins."""
    out = Path(out)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    rows = []
    for res in results:
        pos = res.get("position_ppl")
        if not pos:
            continue
        label = f"{run_label(res)}, L={pos['length']}"
        xs = [c["context"] for c in pos["curve"]]
        ys = [c["loss"] for c in pos["curve"]]
        (line,) = ax.plot(xs, ys, linewidth=1.2, label=label)
        bx = [math.sqrt(b["lo"] * b["hi"]) for b in pos["bins"]]
        ax.plot(bx, [b["loss"] for b in pos["bins"]], "o", color=line.get_color(), markersize=3.5)
        rows += [(run_label(res), "curve", c["context"], c["loss"]) for c in pos["curve"]]
        rows += [(run_label(res), f"bin {b['lo']}-{b['hi']}", math.sqrt(b["lo"] * b["hi"]), b["loss"]) for b in pos["bins"]]
    _mark_train(ax, _train_lengths(results))
    _finish(fig, ax, out, "position in the sequence (tokens of context)", "loss (nats per token)",
            title or "Position-wise loss (line: fine log bins, dots: octave bins)")
    _write_csv(out.with_suffix(".csv"), ["run", "kind", "context", "loss"], rows)
    return out


def plot_effective_remembrance(results: list[Result], out: str | Path, title: str | None = None) -> Path:
    """EffRem_T(t) against t (left; t = 0 drawn at 1/2) and against the kept context T − t (right), both log2;
    the right panel marks the training length."""
    out = Path(out)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    rows = []
    for res in results:
        er = res.get("effective_remembrance")
        if not er:
            continue
        label = f"{run_label(res)}, T={er['T']}"
        (line,) = axes[0].plot([t if t > 0 else 0.5 for t in er["t"]], er["effrem"], marker="o", markersize=3, label=label)
        axes[1].plot([er["T"] - t for t in er["t"]], er["effrem"], marker="o", markersize=3, color=line.get_color(),
                     label=label)
        rows += [(run_label(res), er["T"], t, v) for t, v in zip(er["t"], er["effrem"])]
    _mark_train(axes[1], _train_lengths(results))
    for ax, xlabel in ((axes[0], "t: tokens dropped from the start (t = 0 drawn at 0.5)"),
                       (axes[1], "T − t: context kept")):
        ax.set_ylim(-0.02, 1.02)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("EffRem_T(t) = TV(q(·|x[0:T]), q(·|x[t:T]))")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fig.suptitle(title or "Effective Remembrance (0: the dropped tokens no longer matter)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    _write_csv(out.with_suffix(".csv"), ["run", "T", "t", "effrem"], rows)
    return out


def plot_passkey(results: list[Result], out: str | Path, title: str | None = None) -> Path:
    """Length × depth accuracy grid per run: greedy exact match (left) and ranked vs distractors (right)."""
    out = Path(out)
    runs = [r for r in results if r.get("passkey")]
    fig, axes = plt.subplots(max(1, len(runs)), 2, figsize=(10, 3.2 * max(1, len(runs))), dpi=120, squeeze=False)
    rows = []
    for i, res in enumerate(runs):
        pk = res["passkey"]
        lengths = [str(x) for x in pk["lengths"]]
        depths = [str(d) for d in pk["depths"]]
        for j, (key, name, chance) in enumerate((("accuracy", "greedy exact match", pk["chance"]),
                                                 ("ranked_accuracy", f"ranked vs {pk['distractors']} distractors",
                                                  pk["ranked_chance"]))):
            grid = [[pk[key][L][d] for L in lengths] for d in depths]
            ax = axes[i][j]
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            ax.set_xticks(range(len(lengths)), lengths, rotation=45, fontsize=7)
            ax.set_yticks(range(len(depths)), depths, fontsize=7)
            ax.set_xlabel("context length L (tokens, log2 spaced)")
            ax.set_ylabel("needle depth")
            ax.set_title(f"{run_label(res)}\n{name} (chance {chance:.3g})", fontsize=8)
            T = res.get("train_seq_len")
            if T:
                ints = [int(x) for x in lengths]
                pos = sum(1 for x in ints if x < T) - 0.5
                if -0.5 < pos < len(ints) - 0.5:
                    ax.axvline(pos, color="white", linestyle="--", linewidth=1)
            for a, d in enumerate(depths):
                for b, L in enumerate(lengths):
                    ax.text(b, a, f"{pk[key][L][d]:.2f}", ha="center", va="center", fontsize=6, color="w")
                    rows.append((run_label(res), key, L, d, pk[key][L][d]))
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title or "Passkey retrieval", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    _write_csv(out.with_suffix(".csv"), ["run", "score", "length", "depth", "accuracy"], rows)
    return out


def plot_state_stats(results: list[Result], out: str | Path, title: str | None = None) -> Path:
    """Per state tensor: mean ‖h‖ (solid) and max |h| (dotted) vs position, one panel per run, log-log."""
    out = Path(out)
    runs = [r for r in results if r.get("state_stats")]
    fig, axes = plt.subplots(1, max(1, len(runs)), figsize=(6.5 * max(1, len(runs)), 4.5), dpi=120, squeeze=False)
    rows = []
    for i, res in enumerate(runs):
        st = res["state_stats"]
        ax = axes[0][i]
        xs = st["positions"]
        for key, v in st["keys"].items():
            (line,) = ax.plot(xs, v["norm"], label=f"{key} mean ‖h‖")
            ax.plot(xs, v["max_abs"], linestyle=":", color=line.get_color(), label=f"{key} max |h|")
            rows += [(run_label(res), key, x, a, b, c) for x, a, b, c in zip(xs, v["norm"], v["mean_abs"], v["max_abs"])]
        ax.set_yscale("log")
        _mark_train(ax, _train_lengths([res]))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("position (tokens consumed)")
        ax.set_ylabel("state magnitude")
        ax.set_title(f"{run_label(res)}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title or "Recurrent state by position (zero initial state)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    _write_csv(out.with_suffix(".csv"), ["run", "key", "position", "norm", "mean_abs", "max_abs"], rows)
    return out


def plot_sweep_heatmap(results: list[Result], out: str | Path, title: str | None = None) -> Path:
    """Loss over (run sorted by training T × eval L), LongSSM Fig. 9; the verdict is written beside each row."""
    out = Path(out)
    data = sweep_grid(results)
    grid = [[math.nan if v is None else v for v in row] for row in data["loss"]]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(data["lengths"]) + 3, 1.2 + 0.45 * len(grid)), dpi=120)
    im = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(data["lengths"])), [str(x) for x in data["lengths"]], rotation=45, fontsize=7)
    ax.set_yticks(range(len(grid)), [f"{r['label']}, T={r['train_seq_len']}: {r['verdict']}" for r in data["rows"]],
                  fontsize=7)
    for a, row in enumerate(grid):
        for b, v in enumerate(row):
            if not math.isnan(v):
                ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
        T = data["rows"][a]["train_seq_len"]
        if T and int(T) in data["lengths"]:  # outline the cell L = T
            b = data["lengths"].index(int(T))
            ax.add_patch(plt.Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        elif T:  # T between two evaluation lengths: a bar between them
            pos = sum(1 for x in data["lengths"] if x < int(T)) - 0.5
            ax.plot([pos, pos], [a - 0.5, a + 0.5], color="red", linewidth=2)
    ax.set_xlabel("evaluation length L (tokens, log2 spaced); red: training T")
    ax.set_title(title or "Loss (nats/token) over training T × evaluation L", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    _write_csv(out.with_suffix(".csv"), ["run", "train_seq_len", "verdict", "length", "loss"],
               [(r["label"], r["train_seq_len"], r["verdict"], x, v) for r, row in zip(data["rows"], data["loss"])
                for x, v in zip(data["lengths"], row)])
    return out


PLOTTERS = {
    "ppl_vs_length": ("ppl_vs_length.png", plot_ppl_vs_length),
    "position_ppl": ("position_ppl.png", plot_position_ppl),
    "effective_remembrance": ("effective_remembrance.png", plot_effective_remembrance),
    "passkey": ("passkey.png", plot_passkey),
    "state_stats": ("state_stats.png", plot_state_stats),
}


def plot_all(results: list[Result], out_dir: str | Path, heatmap: bool | None = None) -> list[Path]:
    """Every plot the results have data for, into ``out_dir``; the sweep heatmap when ``heatmap`` (default:
    when the runs have ≥ 2 training lengths or ≥ 2 runs)."""
    out_dir = Path(out_dir)
    written = []
    for metric, (name, fn) in PLOTTERS.items():
        if any(r.get(metric) for r in results):
            written.append(fn(results, out_dir / name))
    if heatmap is None:
        heatmap = len(results) >= 2
    with_ppl = [r for r in results if r.get("ppl_vs_length")]
    if heatmap and with_ppl:
        written.append(plot_sweep_heatmap(with_ppl, out_dir / "sweep_heatmap.png"))
    return written


def markdown_table(results: list[Result]) -> str:
    """Rows = runs, columns = evaluation lengths, last column the length-extension verdict."""
    results = [r for r in results if r.get("ppl_vs_length")]
    lengths = sorted({int(k) for r in results for k in r["ppl_vs_length"]})
    head = "| run | " + " | ".join(str(x) for x in lengths) + " | verdict |"
    sep = "|---|" + "---:|" * len(lengths) + "---|"
    lines = [head, sep]
    for r in results:
        cells = [f"{r['ppl_vs_length'][str(x)]:.3f}" if str(x) in r["ppl_vs_length"] else "" for x in lengths]
        verdict = length_extension_verdict(r["ppl_vs_length"], r.get("train_seq_len"))["verdict"]
        lines.append(f"| {run_label(r)} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


def markdown_report(results: list[Result]) -> str:
    """``markdown_table`` plus one short section per further metric present."""
    parts = [markdown_table(results)] if any(r.get("ppl_vs_length") for r in results) else []
    if any(r.get("position_ppl") for r in results):
        parts.append("\n**Position-wise loss** (octave bins of context size; nats/token)\n")
        for r in results:
            p = r.get("position_ppl")
            if p:
                cells = ", ".join(f"{b['lo']}–{b['hi']}: {b['loss']:.3f}" for b in p["bins"])
                parts.append(f"- {run_label(r)} (L={p['length']}, {p['n_sequences']} seqs): {cells}")
    if any(r.get("effective_remembrance") for r in results):
        parts.append("\n**Effective Remembrance** EffRem_T(t)\n")
        for r in results:
            e = r.get("effective_remembrance")
            if e:
                cells = ", ".join(f"t={t}: {v:.3f}" for t, v in zip(e["t"], e["effrem"]))
                parts.append(f"- {run_label(r)} (T={e['T']}, {e['n_sequences']} seqs): {cells}")
    if any(r.get("passkey") for r in results):
        parts.append("\n**Passkey** mean accuracy over depths (greedy / ranked)\n")
        for r in results:
            pk = r.get("passkey")
            if pk:
                cells = ", ".join(f"L={L}: {pk['mean_accuracy'][L]:.2f} / {pk['mean_ranked_accuracy'][L]:.2f}"
                                  for L in pk["mean_accuracy"])
                parts.append(f"- {run_label(r)}: {cells} (chance {pk['chance']:.0e} / {pk['ranked_chance']:.2f})")
    if any(r.get("state_stats") for r in results):
        parts.append("\n**State norm** mean ‖h‖ at the first / training / last position\n")
        for r in results:
            st = r.get("state_stats")
            if st:
                pos = st["positions"]
                T = r.get("train_seq_len")
                j = pos.index(T) if T in pos else None
                for key, v in st["keys"].items():
                    mid = f" / {v['norm'][j]:.3g} @T" if j is not None else ""
                    parts.append(f"- {run_label(r)} {key}: {v['norm'][0]:.3g} @1{mid} / {v['norm'][-1]:.3g} @{pos[-1]}")
    return "\n".join(parts)
