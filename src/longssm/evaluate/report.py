"""Tables and verdicts from eval result dicts (``longssm eval --json`` files): length-extension verdicts, the
(training T × evaluation L) loss grid of a sweep (LongSSM [1], Fig. 9), run labels (unique across the results
shown together: ``with_unique_labels``) and markdown reports. Pure Python: no torch, no matplotlib.

References
    [1] Wang et al., "LongSSM: On the Length Extension of State-space Models in Language Modelling", 2024,
        arXiv:2406.02080.

Verdict of one run, from its perplexities at the evaluation lengths L_0 < L_1 < ... that are ≥ its training
length T (at least two of them are needed, else "n/a"). A change between two lengths is *resolved* when it is
larger than its uncertainty: with the evaluation's blocks (``ppl_blocks``, ``longssm eval --ci bootstrap``, the
default) when the paired bootstrap interval of ppl(L_j) − ppl(L_i) at ``confidence`` excludes zero (``stats.py``);
without them (``--ci none``, results from before intervals, fewer than two blocks of text) when it exceeds
``MIN_RELATIVE_CHANGE`` of ppl(L_i).

    none    some consecutive pair rises, resolved                           (degrades somewhere past T)
    strong  otherwise, and ppl(L_last) is below ppl(L_0), resolved          (keeps improving past T)
    weak    otherwise                                                       (neither degrades nor resolvably improves)
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data.tasks import EVAL_TASKS

Result = dict[str, Any]
"""An eval result as written to JSON (see ``evaluate/run.py``)."""

MIN_RELATIVE_CHANGE = 1e-3
"""The smallest relative change a verdict counts when there are no blocks to measure its uncertainty."""


def paired_difference(a: Result, b: Result, La: int | str, Lb: int | str, confidence: float = 0.95,
                      tol: float = MIN_RELATIVE_CHANGE) -> dict[str, Any]:
    """ppl_b(Lb) − ppl_a(La) with its interval and ``"resolved"``: over seeds when both results have the same
    number (>= 2) of per-seed values (``ppl_seeds``, paired by seed: t interval of the differences), else over the
    evaluation's blocks when both have them (paired bootstrap), else no interval and resolved when the change
    exceeds ``tol`` of ppl_a. ``{"diff", "low", "high", "rule", "resolved"}`` (low, high None without interval)."""
    from ..stats import Blocks, excludes_zero, t_interval

    La, Lb = str(La), str(Lb)
    pa, pb = a["ppl_vs_length"][La], b["ppl_vs_length"][Lb]
    sa, sb = (a.get("ppl_seeds") or {}).get(La, []), (b.get("ppl_seeds") or {}).get(Lb, [])
    if len(sa) >= 2 and len(sa) == len(sb):
        t = t_interval([y - x for x, y in zip(sa, sb)], confidence)
        out = {"diff": t["mean"], "low": t["mean"] - t["half_width"], "high": t["mean"] + t["half_width"],
               "rule": f"t over {len(sa)} seeds"}
        return out | {"resolved": excludes_zero(out)}
    ba, bb = Blocks.from_json(a.get("ppl_blocks")), Blocks.from_json(b.get("ppl_blocks"))
    interval = ba.paired(bb, La, Lb, confidence) if ba and bb else None
    if interval is not None:
        return {"diff": interval["diff"], "low": interval["low"], "high": interval["high"],
                "rule": "paired bootstrap", "resolved": excludes_zero(interval)}
    return {"diff": pb - pa, "low": None, "high": None, "rule": f"relative change > {tol:g}",
            "resolved": abs(pb - pa) > tol * pa}


def length_extension_verdict(ppl: dict[str, float], train_seq_len: int | None,
                             blocks: dict[str, Any] | None = None, confidence: float = 0.95,
                             tol: float = MIN_RELATIVE_CHANGE, seeds: dict[str, list[float]] | None = None
                             ) -> dict[str, Any]:
    """``{"verdict": strong|weak|none|n/a, "from": T, "lengths": [...], "worst_ratio": max ppl(L_{i+1})/ppl(L_i),
    "rule"}`` (see the module docstring). ``blocks``: a result's ``ppl_blocks`` (``{"counts", "sums": {L: [...]}}``);
    ``seeds``: per-seed perplexities ``{L: [...]}`` of a cell run with several seeds (then the changes are judged
    over seeds, ``paired_difference``)."""
    T = int(train_seq_len or 0)
    points = sorted((int(k), float(v)) for k, v in ppl.items() if int(k) >= T)
    if len(points) < 2:
        return {"verdict": "n/a", "from": T, "lengths": [p[0] for p in points], "worst_ratio": None, "rule": None}
    result = {"ppl_vs_length": ppl, "ppl_blocks": blocks, "ppl_seeds": seeds}

    def change(i: int, j: int) -> dict[str, Any]:
        return paired_difference(result, result, points[i][0], points[j][0], confidence, tol)

    steps = [change(i, i + 1) for i in range(len(points) - 1)]
    overall = change(0, len(points) - 1)
    rises = any(s["resolved"] and s["diff"] > 0 for s in steps)
    verdict = "none" if rises else "strong" if overall["resolved"] and overall["diff"] < 0 else "weak"
    ratios = [b / a if a > 0 else math.inf for (_, a), (_, b) in itertools.pairwise(points)]
    return {"verdict": verdict, "from": T, "lengths": [p[0] for p in points], "worst_ratio": max(ratios),
            "rule": overall["rule"]}


def length_extension_of(result: Result) -> dict[str, Any]:
    """The length-extension verdict of an eval result or a seed-aggregated sweep row: the one it stores
    (``length_extension``, decided once when it was evaluated or aggregated) when this rule decided it, else
    decided now from its seeds or blocks (results written before the rule had a ``"rule"`` entry, or a result whose
    training length was changed since)."""
    stored = result.get("length_extension")
    if (isinstance(stored, dict) and "rule" in stored and stored.get("verdict")
            and stored.get("from") == int(result.get("train_seq_len") or 0)):
        return stored
    return length_extension_verdict(result["ppl_vs_length"], result.get("train_seq_len"), result.get("ppl_blocks"),
                                    (result.get("ppl_interval") or {}).get("confidence", 0.95),
                                    seeds=result.get("ppl_seeds"))


def verdict_of(result: Result) -> str:
    """``length_extension_of(result)["verdict"]``."""
    return length_extension_of(result)["verdict"]


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
            "verdict": verdict_of(r),
        })
        grid.append([_loss(ppl.get(str(x))) for x in lengths])
    return {"rows": rows, "lengths": lengths, "loss": grid}


def _loss(ppl: float | None) -> float | None:
    """log ppl, None where there is no perplexity or it is not a finite positive number."""
    return math.log(ppl) if ppl is not None and math.isfinite(ppl) and ppl > 0 else None


def ppl_cell(ppl: float, interval: dict[str, float] | None) -> str:
    """``5.135`` or, with an interval, ``5.135 ± 0.012`` (half its width; NaN bounds print no ±)."""
    if interval is None or not all(math.isfinite(interval.get(k, math.nan)) for k in ("low", "high")):
        return f"{ppl:.3f}"
    return f"{ppl:.3f} ± {(interval['high'] - interval['low']) / 2:.3f}"


def markdown_table(results: list[Result]) -> str:
    """Perplexity table: rows = runs, columns = evaluation lengths (± half the evaluation's confidence interval
    when it has one), last column the length-extension verdict."""
    results = [r for r in with_unique_labels(results) if r.get("ppl_vs_length")]
    lengths = sorted({int(k) for r in results for k in r["ppl_vs_length"]})
    lines = ["| run | " + " | ".join(str(x) for x in lengths) + " | verdict |",
             "|---|" + "---:|" * len(lengths) + "---|"]
    for r in results:
        intervals = (r.get("ppl_interval") or {}).get("intervals", {})
        cells = [ppl_cell(r["ppl_vs_length"][str(x)], intervals.get(str(x))) if str(x) in r["ppl_vs_length"] else ""
                 for x in lengths]
        verdict = verdict_of(r)
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


def _task_lines(r: Result, t: dict[str, Any]) -> list[str]:
    cells = ", ".join(f"L={L}: {acc:.2f}" for L, acc in t["mean_accuracy"].items())
    return [f": {cells} (chance {t['chance']:.1e} per answer; {t['trials']} instances per cell)"]


SECTIONS: list[tuple[str, str, Callable[[Result, dict[str, Any]], list[str]]]] = [
    ("position_ppl", "**Position-wise loss** (octave bins of context size; nats/token)", _position_lines),
    ("effective_remembrance", "**Effective Remembrance** EffRem_T(t)", _effrem_lines),
    ("passkey", "**Passkey** mean accuracy over depths (greedy / ranked)", _passkey_lines),
    ("state_stats", "**State norm** mean ‖h‖ at the first / training / last position", _state_lines),
    *((name, f"**{name}** accuracy (answers token-exact, teacher-forced), mean over its grid axis", _task_lines)
      for name in EVAL_TASKS),
]
"""(metric, heading, lines of one run) of the report sections after the perplexity table; each line follows the
run's label."""


def markdown_report(results: list[Result]) -> str:
    """``markdown_table`` plus one section per further metric present: a bullet per run (and state key)."""
    results = with_unique_labels(results)
    parts = [markdown_table(results)] if any(r.get("ppl_vs_length") for r in results) else []
    confidence = {r["ppl_interval"]["confidence"] for r in results if r.get("ppl_interval")}
    if confidence:
        parts.append(f"\n(± half the {', '.join(f'{c:.0%}' for c in sorted(confidence))} block-bootstrap interval "
                     f"over the evaluated text; see longssm.stats.)")
    for metric, heading, lines in SECTIONS:
        if any(r.get(metric) for r in results):
            parts.append(f"\n{heading}\n")
            parts += [f"- {run_label(r)}{line}" for r in results if r.get(metric) for line in lines(r, r[metric])]
    return "\n".join(parts)


def sweep_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """The table of ``longssm sweep``: one row per cell — its grid values, ppl at every evaluation length, the
    verdict, training minutes and peak training memory (rows as ``sweep.collect_rows`` makes them). Seed-aggregated
    rows (``sweep.aggregate_seeds``) show mean ± the half-width of the t interval over their seeds and a seeds
    column; rows of one seed show ± half the evaluation's bootstrap interval when it has one."""
    lengths = sorted({int(k) for r in rows for k in r["ppl_vs_length"]})
    seeded = any("ppl_ci" in r for r in rows)
    lines = ["| " + " | ".join(keys) + (" | seeds" if seeded else "") + " | " + " | ".join(str(x) for x in lengths)
             + " | verdict | train min | peak train MB |",
             "|" + "---|" * len(keys) + ("---:|" if seeded else "") + "---:|" * len(lengths) + "---|---:|---:|"]
    for r in rows:
        ppl = r["ppl_vs_length"]
        intervals = ({L: {"low": c["mean"] - c["half_width"], "high": c["mean"] + c["half_width"]}
                      for L, c in r["ppl_ci"].items() if c["half_width"] is not None} if "ppl_ci" in r
                     else ((r.get("result") or {}).get("ppl_interval") or {}).get("intervals", {}))
        cells = [ppl_cell(ppl[str(x)], intervals.get(str(x))) if str(x) in ppl else "" for x in lengths]
        if seeded:
            cells.insert(0, str(len(r.get("seeds", [])) or 1))
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
    "zero_ppl" (of the match, else of the best zero-state run), "difference" (``paired_difference`` of that run's
    ppl minus the previous state's), "resolved", "text"}``. A zero-state run matches when its perplexity is not
    resolvably above the previous state's; the sentence says "not resolved" when the difference's interval holds
    zero (one seed without evaluation blocks: the 1e-3 rule of ``MIN_RELATIVE_CHANGE``)."""
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
        differences = [(r, paired_difference(reference, r, length, length)) for r in zero]
        match = next(((r, d) for r, d in differences if not (d["resolved"] and d["diff"] > 0)), None)
        best = min(differences, key=lambda rd: rd[0]["ppl_vs_length"][length])
        T0 = reference["train_seq_len"]
        run, diff = match or best
        ppl = run["ppl_vs_length"][length]
        where = f"L={length} (ppl {ppl:.3f} vs {target:.3f}; {_difference_text(diff)})"
        if match and diff["resolved"]:
            text = (f"{family}: a zero-state model needs T={run['train_seq_len']} to beat the previous state at "
                    f"T={T0} at {where}.")
        elif match:
            text = (f"{family}: not resolved whether the zero-state model at T={run['train_seq_len']} matches the "
                    f"previous state at T={T0} at {where}.")
        else:
            text = (f"{family}: no zero-state model within the grid matches the previous state at T={T0}; the best, "
                    f"T={run['train_seq_len']}, is worse at {where}.")
        matches.append({"family": family, "length": int(length), "previous_T": T0, "previous_ppl": target,
                        "zero_T": run["train_seq_len"] if match else None, "zero_ppl": ppl, "difference": diff,
                        "resolved": diff["resolved"], "text": text})
    return matches


def _difference_text(diff: dict[str, Any]) -> str:
    """``difference +0.151 [+0.120, +0.183] (paired bootstrap), resolved``."""
    interval = f" [{diff['low']:+.3f}, {diff['high']:+.3f}]" if diff["low"] is not None else ""
    return (f"difference {diff['diff']:+.3f}{interval} ({diff['rule']}), "
            f"{'resolved' if diff['resolved'] else 'not resolved'}")
