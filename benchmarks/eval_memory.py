"""Peak memory of the evaluators at L = 1k and 32k: the chunked recurrence keeps it independent of L.

    python benchmarks/eval_memory.py [--lengths 1024,32768] [--tokens 32768] [--d-model 128] [--threads 1]
                                     [--run RUN_DIR]

Each length runs in a fresh child process (so one length's allocations cannot hide another's), which measures
its resident set size: the baseline after building the model and reading the data, then the peak (VmHWM, reset
between phases through /proc/self/clear_refs) of each phase:

    ppl_zero       ppl at L, zero state, over the same N tokens for every L
    ppl_previous   ppl at L, state carried across sequences (R = ⌈n/16⌉ streams)
    position_pass  position-wise losses + state statistics at L (log-grid cuts, stats hook)
    effrem         Effective Remembrance at T = L, one sequence (≈ L·log2 L tokens)

Prints one JSON object: per length and phase the peak RSS, its increase over the baseline, seconds, tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace, length: int) -> dict:
    import numpy as np
    import torch

    from longssm.config import ModelConfig
    from longssm.evaluate.perplexity import length_curve, make_sequences, sequence_losses
    from longssm.evaluate.remembrance import effective_remembrance
    from longssm.evaluate.state_stats import StateStats
    from longssm.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        from longssm.checkpoint import load_model

        model, _, _ = load_model(args.run)
        vocab = model.config.vocab_size
    else:
        vocab = 256
        torch.manual_seed(0)
        model = build_model(ModelConfig(family=args.family, vocab_size=vocab, d_model=args.d_model,
                                        n_layers=args.n_layers, d_state=args.d_state)).eval()
    tokens = np.random.default_rng(0).integers(0, vocab, args.tokens + 1).astype(np.uint16)
    n_targets = (args.tokens // length) * length
    with torch.no_grad():
        model(torch.zeros(1, 8, dtype=torch.long))  # lazy initialisation outside the measurement
    baseline = _status_mb("VmRSS")
    phases = {
        "ppl_zero": (n_targets, lambda: length_curve(model, tokens, length, n_targets, chunk=args.chunk,
                                                      tokens_per_forward=args.batch_tokens)),
        "ppl_previous": (n_targets, lambda: length_curve(model, tokens, length, n_targets, "previous",
                                                          chunk=args.chunk, tokens_per_forward=args.batch_tokens)),
        "position_pass": (n_targets, lambda: sequence_losses(model, make_sequences(tokens, length, n_targets), args.chunk,
                                                              args.batch_tokens, cuts=StateStats(length).positions,
                                                              on_segment=StateStats(length))),
    }
    if not args.no_effrem:
        phases["effrem"] = (None, lambda: effective_remembrance(model, tokens, length, 1, chunk=args.chunk,
                                                                 tokens_per_forward=args.batch_tokens))
    out = {"baseline_rss_mb": round(baseline, 1)}
    for name, (n_tok, fn) in phases.items():
        reset = _reset_peak()
        t0 = time.perf_counter()
        res = fn()
        dt = time.perf_counter() - t0
        fed = res["tokens_fed"] if isinstance(res, dict) else n_tok
        peak = _status_mb("VmHWM")
        out[name] = {"peak_rss_mb": round(peak, 1), "increase_mb": round(peak - baseline, 1), "seconds": round(dt, 2),
                     "tokens": fed, "tokens_per_s": round(fed / dt), "peak_reset": reset}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="1024,32768")
    p.add_argument("--tokens", type=int, default=32768, help="evaluation tokens N (the same at every length)")
    p.add_argument("--family", default="mamba")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run", help="evaluate this run's model instead of a random one")
    p.add_argument("--no-effrem", action="store_true", help="skip Effective Remembrance (≈ L·log2 L tokens)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args, args.child)))
        return
    lengths = [int(x) for x in args.lengths.split(",")]
    results = {}
    for L in lengths:
        cmd = [sys.executable, __file__, "--child", str(L)] + [a for a in sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        results[str(L)] = json.loads(proc.stdout.strip().splitlines()[-1])
    first, last = results[str(lengths[0])], results[str(lengths[-1])]
    summary = {
        "benchmark": "eval_memory",
        "model": {"family": args.family, "d_model": args.d_model, "n_layers": args.n_layers, "d_state": args.d_state}
        if not args.run else {"run": args.run},
        "tokens": args.tokens, "chunk": args.chunk, "batch_tokens": args.batch_tokens, "threads": args.threads,
        "results": results,
        "peak_increase_ratio_last_over_first": {
            k: round(last[k]["increase_mb"] / max(first[k]["increase_mb"], 1e-9), 2)
            for k in first if isinstance(first[k], dict)
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
