"""``longssm quickstart``: the LongSSM experiment in one command, on the shipped data, in minutes on a CPU.

The same small model is trained twice at T=16 on the WikiText-103 training slice — once with a zero initial
state per window, once with the previous window's final state (stateful truncated BPTT) — and both are
evaluated on a prefix of the validation split at L = 16 … 32768. The zero-state model stalls or degrades past
T; the previous-state model keeps improving.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .cli_parsing import parse_into
from .config import DEFAULT_LENGTHS, EvalConfig, RunConfig
from .evaluate.plots import plot_ppl_vs_length
from .evaluate.report import markdown_table
from .evaluate.run import evaluate_run, write_outputs
from .errors import UserError
from .train import train

# Chosen so that both runs and their evaluations finish in well under 15 minutes on 2 CPU cores.
QUICKSTART: dict[str, Any] = {
    "model": {"family": "mamba", "d_model": 128, "n_layers": 2, "d_state": 16},
    "data": {"tokenizer": "byte"},
    "train": {"seq_len": 16, "batch_size": 32, "steps": 2000, "lr": 3e-3, "warmup_steps": 100, "log_every": 50},
}


def quickstart(
    out: str = "runs/quickstart",
    family: str = "mamba",
    steps: int | None = None,
    tokenizer: str = "byte",
    eval_tokens: int = 65536,
    max_length: int = 32768,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    out_dir = Path(out)
    lengths = [x for x in DEFAULT_LENGTHS if x <= max_length]
    if not lengths:
        raise UserError(f"--max-length must be >= {DEFAULT_LENGTHS[0]}; got {max_length}")
    if eval_tokens < lengths[-1]:
        raise UserError(f"--eval-tokens ({eval_tokens}) must be >= the longest evaluation length ({lengths[-1]})")
    eval_cfg = EvalConfig(lengths=lengths, max_tokens=eval_tokens)
    results = []
    t0 = time.perf_counter()
    for scheme in ("zero", "previous"):
        base = json.loads(json.dumps(QUICKSTART))
        base["model"]["family"] = family
        base["data"]["tokenizer"] = tokenizer
        base["state"] = {"scheme": scheme}
        base["name"] = f"{family}-T16-{scheme}"
        if steps is not None:
            base["train"]["steps"] = steps
        base["train"]["progress"] = progress
        cfg = parse_into(RunConfig, args=overrides, base=base)
        run_dir = out_dir / cfg.name
        print(f"== training {cfg.name} ({cfg.train.steps} steps, T={cfg.train.seq_len}, B={cfg.train.batch_size})")
        train(cfg, run_dir)
        print(f"== evaluating {cfg.name} at L = {lengths[0]} … {lengths[-1]} on {eval_tokens} validation tokens")
        res = evaluate_run(run_dir, eval_cfg, progress=progress)
        write_outputs(res, out_dir / f"{cfg.name}.json")
        results.append(res)
    table = markdown_table(results)
    plot = plot_ppl_vs_length(results, out_dir / "ppl_vs_length.png", title=f"{family}, trained at T=16: zero vs previous initial state")
    (out_dir / "results.md").write_text(table + "\n")
    minutes = (time.perf_counter() - t0) / 60
    print("\nperplexity vs evaluation length (validation prefix of %d tokens):\n" % eval_tokens)
    print(table)
    print(f"\nplot: {plot}\ntable: {out_dir / 'results.md'}\ntotal time: {minutes:.1f} min")
    return {"results": results, "plot": str(plot), "minutes": minutes}
