"""Peak memory of evaluating a mamba-130m-shaped model at L = 32768 on CPU: the chunked recurrence keeps it flat.

    python benchmarks/eval_130m_memory.py [--json OUT.json] [--quick] [--length 32768] [--family mamba]

A fresh child process builds the model locally with random weights — mamba-130m's shape by default: d_model 768,
24 layers, d_state 16, expand 2, d_conv 4, vocabulary 50280 (~129M parameters, float32) — and computes the
perplexity of one sequence of --length random tokens exactly as ``longssm eval`` does
(``evaluate.perplexity.ppl_vs_length``: chunks of --chunk tokens with the state carried, ``torch.no_grad``). It
reports its peak RSS (VmHWM, torch itself included) after building the model and after the evaluation. --quick
runs a tiny shape (the CI smoke test).

Prints one JSON object: eval = {peak_rss_mb, rss_after_build_mb, parameters, seconds, tokens_per_s},
ratios.eval."peak_rss_mb/2048" (the issue's target: < 1), notes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
import torch

import common

NOTES = [
    "one fresh subprocess; random weights and random tokens (memory and time do not depend on their values)",
    "peak_rss_mb = peak RSS (VmHWM) of that subprocess, torch itself included; rss_after_build_mb = the same after "
    "building the model",
]
TARGET_MB = 2048


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.BenchParser(__doc__)
    parser.add_argument("--family", choices=("mamba", "mamba2"), default="mamba", help="model family (default mamba)")
    parser.add_sized("--length", 32768, 256, type=int, help="evaluation length L")
    parser.add_sized("--d-model", 768, 32, type=int, help="d_model")
    parser.add_sized("--n-layers", 24, 2, type=int, help="layers")
    parser.add_sized("--vocab-size", 50280, 256, type=int, help="vocabulary size")
    parser.add_argument("--chunk", type=int, default=1024, help="tokens per chunk of the recurrence (default 1024)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: build the model, evaluate one sequence of spec["length"] tokens; peak RSS and time."""
    from longssm.config import ModelConfig
    from longssm.evaluate.perplexity import default_tokens_per_forward, ppl_vs_length
    from longssm.models import build_model

    common.set_threads(spec["threads"])
    torch.manual_seed(0)
    config = ModelConfig(family=spec["family"], vocab_size=spec["vocab_size"], d_model=spec["d_model"],
                         n_layers=spec["n_layers"], d_state=16, expand=2, d_conv=4, head_dim=64)
    model = build_model(config).eval()
    rss_build = common.peak_rss_mb()
    tokens = np.random.default_rng(0).integers(0, spec["vocab_size"], spec["length"] + 1).astype(np.int32)
    started = time.perf_counter()
    ppl_vs_length(model, tokens, [spec["length"]], chunk=spec["chunk"],
                  tokens_per_forward=default_tokens_per_forward(spec["vocab_size"]))
    seconds = time.perf_counter() - started
    return {"peak_rss_mb": common.peak_rss_mb(), "rss_after_build_mb": rss_build,
            "parameters": sum(p.numel() for p in model.parameters()), "seconds": seconds,
            "tokens_per_s": spec["length"] / seconds}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """eval, ratios and notes (see the module docstring)."""
    spec = {"family": args.family, "length": args.length, "d_model": args.d_model, "n_layers": args.n_layers,
            "vocab_size": args.vocab_size, "chunk": args.chunk, "threads": args.threads}
    record = common.run_child([sys.executable, __file__, "--child", json.dumps(spec)], timeout=3600)
    common.progress(f"eval L={args.length}", record if isinstance(record, dict) else {"": record})
    peak = record["peak_rss_mb"] if isinstance(record, dict) else None
    return {"eval": record, "ratios": {"eval": {f"peak_rss_mb/{TARGET_MB}": common.ratio(peak, TARGET_MB)}},
            "notes": NOTES}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    config = {"family": args.family, "length": args.length, "d_model": args.d_model, "n_layers": args.n_layers,
              "vocab_size": args.vocab_size, "chunk": args.chunk}
    return common.report(args, "eval_130m_memory", config, lambda: measure(args))


if __name__ == "__main__":
    main()
