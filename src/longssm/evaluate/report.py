"""Tables and verdicts from eval result dicts (``longssm eval --json`` files): length-extension verdicts, the
(training T × evaluation L) loss grid of a sweep (LongSSM [1], Fig. 9), run labels (unique across the results
shown together: ``with_unique_labels``) and markdown reports. Pure Python: no torch, no matplotlib.

References
    [1] Wang et al., "LongSSM: On the Length Extension of State-space Models in Language Modelling", 2024,
        arXiv:2406.02080.

Verdict of one run, from its perplexities at the evaluation lengths L_0 < L_1 < ... that are ≥ its training
length T (at least two of them are needed, else "n/a"):

    strong  ppl(L_{i+1}) <  ppl(L_i) for every consecutive pair       (keeps improving past T)
    weak    ppl(L_{i+1}) <= ppl(L_i) · (1 + tol) for every pair         (does not degrade; tol = 1e-3)
    none    otherwise                                                  (degrades somewhere past T)
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Result = dict[str, Any]
"""An eval result as written to JSON (see ``evaluate/run.py``)."""

WEAK_TOLERANCE = 1e-3


def length_extension_verdict(ppl: dict[str, float], train_seq_len: int | None,
                             tol: float = WEAK_TOLERANCE) -> dict[str, Any]:
    """``{"verdict": strong|weak|none|n/a, "from": T, "lengths": [...], "worst_ratio": max ppl(L_{i+1})/ppl(L_i)}``."""
    T = int(train_seq_len or 0)
    points = sorted((int(k), float(v)) for k, v in ppl.items() if int(k) >= T)
    if len(points) < 2:
        return {"verdict": "n/a", "from": T, "lengths": [p[0] for p in points], "worst_ratio": None}
    ratios = [b / a if a > 0 else math.inf for (_, a), (_, b) in itertools.pairwise(points)]
    if all(r < 1.0 for r in ratios):
        verdict = "strong"
    elif all(r <= 1.0 + tol for r in ratios):
        verdict = "weak"
    else:
        verdict = "none"
    return {"verdict": verdict, "from": T, "lengths": [p[0] for p in points], "worst_ratio": max(ratios)}


def run_label(result: Result) -> str:
    """The result's ``"label"`` when it has one (``with_unique_labels``), else ``"name (family, scheme)"``, leaving
    out parts the name already contains."""
    if result.get("label"):
        return str(result["label"])
    return _described(result.get("name") or directory_label(result), result)


def _described(name: str, result: Result) -> str:
    """``"name (family, scheme)"``, leaving out parts ``name`` already contains."""
    extra = ", ".join(str(x) for x in (result.get("family"), result.get("scheme")) if x and str(x) not in str(name))
    return f"{name} ({extra})" if extra else str(name)


def directory_label(result: Result) -> str:
    """The name of the run directory the result was evaluated from: ``runs/a`` and ``runs/a/final`` -> ``a``,
    ``runs/a/checkpoints/step-00000004`` -> ``a/step-00000004``."""
    path = Path(str(result.get("run") or "run")).absolute()
    if path.name == "final":
        return path.parent.name or path.name
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name or str(path)


def file_label(source: str | Path) -> str:
    """A result file as a label: its folder's name and its stem (``evals/a.json`` -> ``evals/a``)."""
    path = Path(source).absolute()
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def with_unique_labels(results: Sequence[Result], sources: Sequence[str | Path | None] | None = None) -> list[Result]:
    """Copies of ``results``, each with a ``"label"`` that no other of them has: ``run_label``; where labels
    collide (two runs both named ``run``), the run's directory name in place of its name (``directory_label``),
    then the result file's folder and stem (``file_label`` of ``sources[i]``, the file result ``i`` was read from,
    when given), then a number (``#1``, ``#2``). Labels that are already unique are kept, so applying it again
    changes nothing."""
    sources = list(sources) if sources is not None else [None] * len(results)
    labels = [run_label(r) for r in results]
    renamers: list[Callable[[int], str | None]] = [
        lambda i: _described(directory_label(results[i]), results[i]),
        lambda i: _described(file_label(sources[i]), results[i]) if sources[i] is not None else None,
    ]
    for rename in renamers:
        counts = collections.Counter(labels)
        for i, label in enumerate(labels):
            if counts[label] > 1:
                labels[i] = rename(i) or label
    counts, seen = collections.Counter(labels), collections.Counter()
    for i, label in enumerate(labels):
        if counts[label] > 1:
            seen[label] += 1
            labels[i] = f"{label} #{seen[label]}"
    return [{**r, "label": label} for r, label in zip(results, labels)]


def sweep_grid(results: list[Result]) -> dict[str, Any]:
    """Loss (log ppl) grid over (run, eval L), runs sorted by (family, scheme, training T).

    Returns ``{"rows": [{"label", "train_seq_len", "scheme", "family", "verdict"}], "lengths": [...],
    "loss": [[loss or None, ...], ...]}`` (None: no perplexity at that length, or one that is not finite).
    """
    ordered = sorted(with_unique_labels(results), key=lambda r: (str(r.get("family")), str(r.get("scheme")),
                                                                 int(r.get("train_seq_len") or 0), run_label(r)))
    lengths = sorted({int(k) for r in ordered for k in r.get("ppl_vs_length", {})})
    rows, grid = [], []
    for r in ordered:
        ppl = r.get("ppl_vs_length", {})
        rows.append({
            "label": run_label(r),
            "train_seq_len": r.get("train_seq_len"),
            "scheme": r.get("scheme"),
            "family": r.get("family"),
            "verdict": length_extension_verdict(ppl, r.get("train_seq_len"))["verdict"],
        })
        grid.append([_loss(ppl.get(str(x))) for x in lengths])
    return {"rows": rows, "lengths": lengths, "loss": grid}


def _loss(ppl: float | None) -> float | None:
    """log ppl, None where there is no perplexity or it is not a finite positive number."""
    return math.log(ppl) if ppl is not None and math.isfinite(ppl) and ppl > 0 else None


def markdown_table(results: list[Result]) -> str:
    """Perplexity table: rows = runs, columns = evaluation lengths, last column the length-extension verdict."""
    results = [r for r in with_unique_labels(results) if r.get("ppl_vs_length")]
    lengths = sorted({int(k) for r in results for k in r["ppl_vs_length"]})
    lines = ["| run | " + " | ".join(str(x) for x in lengths) + " | verdict |",
             "|---|" + "---:|" * len(lengths) + "---|"]
    for r in results:
        cells = [f"{r['ppl_vs_length'][str(x)]:.3f}" if str(x) in r["ppl_vs_length"] else "" for x in lengths]
        verdict = length_extension_verdict(r["ppl_vs_length"], r.get("train_seq_len"))["verdict"]
        lines.append(f"| {run_label(r)} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


def _position_lines(r: Result, p: dict[str, Any]) -> list[str]:
    cells = ", ".join(f"{b['lo']}–{b['hi']}: {b['loss']:.3f}" for b in p["bins"])
    return [f" (L={p['length']}, {p['n_sequences']} seqs): {cells}"]


def _effrem_lines(r: Result, e: dict[str, Any]) -> list[str]:
    cells = ", ".join(f"t={t}: {v:.3f}" for t, v in zip(e["t"], e["effrem"]))
    return [f" (T={e['T']}, {e['n_sequences']} seqs): {cells}"]


def _passkey_lines(r: Result, pk: dict[str, Any]) -> list[str]:
    cells = ", ".join(f"L={L}: {pk['mean_accuracy'][L]:.2f} / {pk['mean_ranked_accuracy'][L]:.2f}"
                      for L in pk["mean_accuracy"])
    return [f": {cells} (chance {pk['chance']:.0e} / {pk['ranked_chance']:.2f})"]


def _state_lines(r: Result, st: dict[str, Any]) -> list[str]:
    positions, T = st["positions"], r.get("train_seq_len")
    at_T = positions.index(T) if T in positions else None
    lines = []
    for key, v in st["keys"].items():
        mid = f" / {v['norm'][at_T]:.3g} @T" if at_T is not None else ""
        lines.append(f" {key}: {v['norm'][0]:.3g} @1{mid} / {v['norm'][-1]:.3g} @{positions[-1]}")
    return lines


SECTIONS: list[tuple[str, str, Callable[[Result, dict[str, Any]], list[str]]]] = [
    ("position_ppl", "**Position-wise loss** (octave bins of context size; nats/token)", _position_lines),
    ("effective_remembrance", "**Effective Remembrance** EffRem_T(t)", _effrem_lines),
    ("passkey", "**Passkey** mean accuracy over depths (greedy / ranked)", _passkey_lines),
    ("state_stats", "**State norm** mean ‖h‖ at the first / training / last position", _state_lines),
]
"""(metric, heading, lines of one run) of the report sections after the perplexity table; each line follows the
run's label."""


def markdown_report(results: list[Result]) -> str:
    """``markdown_table`` plus one section per further metric present: a bullet per run (and state key)."""
    results = with_unique_labels(results)
    parts = [markdown_table(results)] if any(r.get("ppl_vs_length") for r in results) else []
    for metric, heading, lines in SECTIONS:
        if any(r.get(metric) for r in results):
            parts.append(f"\n{heading}\n")
            parts += [f"- {run_label(r)}{line}" for r in results if r.get(metric) for line in lines(r, r[metric])]
    return "\n".join(parts)


def sweep_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """The table of ``longssm sweep``: one row per cell — its grid values, ppl at every evaluation length, the
    verdict, training minutes and peak training memory (rows as ``sweep.collect_rows`` makes them)."""
    lengths = sorted({int(k) for r in rows for k in r["ppl_vs_length"]})
    lines = ["| " + " | ".join(keys) + " | " + " | ".join(str(x) for x in lengths)
             + " | verdict | train min | peak train MB |",
             "|" + "---|" * len(keys) + "---:|" * len(lengths) + "---|---:|---:|"]
    for r in rows:
        ppl = r["ppl_vs_length"]
        cells = [f"{ppl[str(x)]:.3f}" if str(x) in ppl else "" for x in lengths]
        verdict = f"failed: {r['failed']}" if r.get("failed") else (r["verdict"] or "not evaluated")
        minutes = "" if r.get("train_seconds") is None else f"{r['train_seconds'] / 60:.1f}"
        memory = "" if r.get("train_peak_mb") is None else f"{r['train_peak_mb']:.0f}"
        lines.append("| " + " | ".join(str(r["values"][k]) for k in keys) + " | " + " | ".join(cells)
                     + f" | {verdict} | {minutes} | {memory} |")
    return "\n".join(lines)


def zero_state_matches(results: list[Result]) -> list[dict[str, Any]]:
    """Per family with runs of both schemes: the smallest training T at which a zero-state run matches the
    previous-state run of the smallest T, at the longest evaluation length both have (LongSSM Fig. 6).

    Each entry: ``{"family", "length", "previous_T", "previous_ppl", "zero_T" (None: none within the grid),
    "zero_ppl" (of the match, else of the best zero-state run), "text"}``."""
    matches = []
    for family in sorted({str(r.get("family")) for r in results}):
        runs = sorted((r for r in results if str(r.get("family")) == family), key=lambda r: int(r["train_seq_len"]))
        previous = [r for r in runs if r.get("scheme") == "previous"]
        zero = [r for r in runs if r.get("scheme") == "zero"]
        if not previous or not zero:
            continue
        reference = previous[0]
        common = set(reference["ppl_vs_length"]).intersection(*(r["ppl_vs_length"] for r in zero))
        if not common:
            continue
        length = str(max(map(int, common)))
        target = reference["ppl_vs_length"][length]
        match = next((r for r in zero if r["ppl_vs_length"][length] <= target), None)
        best = min(zero, key=lambda r: r["ppl_vs_length"][length])
        T0 = reference["train_seq_len"]
        if match:
            text = (f"{family}: a zero-state model needs T={match['train_seq_len']} to match the previous state at "
                    f"T={T0} at L={length} (ppl {match['ppl_vs_length'][length]:.3f} <= {target:.3f}).")
        else:
            text = (f"{family}: no zero-state model within the grid matches the previous state at T={T0} at "
                    f"L={length} (ppl {target:.3f}; best zero state: T={best['train_seq_len']}, "
                    f"{best['ppl_vs_length'][length]:.3f}).")
        matches.append({"family": family, "length": int(length), "previous_T": T0, "previous_ppl": target,
                        "zero_T": match["train_seq_len"] if match else None,
                        "zero_ppl": (match or best)["ppl_vs_length"][length], "text": text})
    return matches
