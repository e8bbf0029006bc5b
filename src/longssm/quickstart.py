"""``longssm quickstart``: the LongSSM experiment in one command, on the shipped data, in minutes on a CPU.

The same small model of each family (Mamba and S5 by default: the two families of the paper) is trained twice
at T=16 on the WikiText-103 training slice — once with a zero initial state per window, once with the previous
window's final state (stateful truncated BPTT) — and every run is evaluated on a prefix of the validation split
at L = 16 … 32768. The zero-state models stall (Mamba) or degrade (S5) past T; the previous-state models keep
improving. It is a ``longssm sweep`` over ``model.family × state.scheme`` of ``quickstart_config()``: one
table (``results.md``) and one plot (``ppl_vs_length.png``), and a rerun resumes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from .config import DEFAULT_LENGTHS, EvalConfig, Overrides
from .errors import ConfigError
from .paths import shipped_configs
from .sweep import sweep


def quickstart_config() -> dict[str, Any]:
    """The shipped ``configs/quickstart.yaml`` (one source: ``longssm train --config quickstart`` trains the same
    run), chosen so that the four runs and their evaluations finish in well under 15 minutes on 2 CPU cores. It pins
    ``state.p_zero`` 0: the quickstart shows the paper's pure zero-vs-previous comparison, not the default recipe."""
    return yaml.safe_load(shipped_configs()["quickstart"].read_text())


def quickstart(
    out: str = "runs/quickstart",
    family: str = "mamba,s5",
    steps: int | None = None,
    tokenizer: str = "byte",
    eval_tokens: int = 65536,
    max_length: int = 32768,
    overrides: Overrides | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train each of the comma-separated ``family`` with a zero and a previous initial state, evaluate, tabulate.

    ``overrides`` (dotted config keys, see ``config.Overrides``) apply to every run. Returns ``{"results": [eval
    result of each run], "plot": path, "minutes": float}``, runs in the order of ``family``, zero before previous."""
    lengths = [x for x in DEFAULT_LENGTHS if x <= max_length]
    if not lengths:
        raise ConfigError("max_length", f">= {DEFAULT_LENGTHS[0]}", max_length)
    if eval_tokens < lengths[-1]:
        raise ConfigError("eval_tokens", f">= the longest evaluation length ({lengths[-1]})", eval_tokens)
    base = quickstart_config()
    base["data"]["tokenizer"] = tokenizer
    if steps is not None:
        base["train"]["steps"] = steps
    started = time.perf_counter()
    summary = sweep(base, [f"model.family={family}", "state.scheme=zero,previous"], out,
                    EvalConfig(lengths=lengths, max_tokens=eval_tokens), overrides=overrides, progress=progress)
    minutes = (time.perf_counter() - started) / 60
    out_dir = Path(out)
    print(f"\nperplexity vs evaluation length (validation prefix of {eval_tokens} tokens, T=16):\n")
    print((out_dir / "results.md").read_text())
    print(f"plot: {out_dir / 'ppl_vs_length.png'}\ntable: {out_dir / 'results.md'}\ntotal time: {minutes:.1f} min")
    results = [row["result"] for row in summary["rows"]]
    return {"results": results, "plot": str(out_dir / "ppl_vs_length.png"), "minutes": minutes}
