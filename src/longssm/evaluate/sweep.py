"""Length-extension verdicts and the (training T × evaluation L) loss grid of a sweep (LongSSM [1], Fig. 9).

References
    [1] Wang et al., "LongSSM: On the Length Extension of State-space Models in Language Modelling", 2024.

Verdict of one run, from its perplexities at the evaluation lengths L_0 < L_1 < ... that are ≥ its training
length T (at least two of them are needed, else "n/a"):

    strong  ppl(L_{i+1}) <  ppl(L_i) for every consecutive pair       (keeps improving past T)
    weak    ppl(L_{i+1}) <= ppl(L_i) · (1 + tol) for every pair         (does not degrade; tol = 1e-3)
    none    otherwise                                                  (degrades somewhere past T)
"""

from __future__ import annotations

import math
from typing import Any

WEAK_TOLERANCE = 1e-3


def length_extension_verdict(ppl: dict[str, float], train_seq_len: int | None, tol: float = WEAK_TOLERANCE) -> dict:
    """``{"verdict": strong|weak|none|n/a, "from": T, "lengths": [...], "worst_ratio": max ppl(L_{i+1})/ppl(L_i)}``."""
    T = int(train_seq_len or 0)
    points = sorted((int(k), float(v)) for k, v in ppl.items() if int(k) >= T)
    if len(points) < 2:
        return {"verdict": "n/a", "from": T, "lengths": [p[0] for p in points], "worst_ratio": None}
    ratios = [b / a for (_, a), (_, b) in zip(points[:-1], points[1:])]
    if all(r < 1.0 for r in ratios):
        verdict = "strong"
    elif all(r <= 1.0 + tol for r in ratios):
        verdict = "weak"
    else:
        verdict = "none"
    return {"verdict": verdict, "from": T, "lengths": [p[0] for p in points], "worst_ratio": max(ratios)}


def sweep_grid(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Loss (log ppl) grid over (run, eval L), runs sorted by (family, scheme, training T).

    Returns ``{"rows": [{"label", "train_seq_len", "scheme", "family", "verdict"}], "lengths": [...],
    "loss": [[loss or None, ...], ...]}``.
    """
    from .plots import run_label

    ordered = sorted(results, key=lambda r: (str(r.get("family")), str(r.get("scheme")), int(r.get("train_seq_len") or 0),
                                             run_label(r)))
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
        grid.append([math.log(ppl[str(x)]) if str(x) in ppl else None for x in lengths])
    return {"rows": rows, "lengths": lengths, "loss": grid}
