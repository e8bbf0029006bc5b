"""Peak memory of ``longssm generate`` vs the number of generated tokens: decoding from the carried state keeps it flat.

    python benchmarks/generate_memory.py [--json OUT.json] [--quick] [--new-tokens 256,4096] [--prompt-tokens 512]

Each length runs in a fresh child process, so that no length's allocations hide another's: it builds the
Mamba-1 model (adapters.py, byte vocabulary, float32, random weights), consumes a prompt of --prompt-tokens
random tokens with the chunked recurrence and generates N tokens one at a time from the carried state
(``longssm.generate.generate_ids``, sampling at temperature 1, seed 0, ``torch.no_grad``). It reports its peak
RSS (VmHWM of that process, torch itself included) after a warm-up generation of 8 tokens (``rss_after_setup_mb``)
and after the N tokens (``peak_rss_mb``), and the decoding speed.

Prints one JSON object: generate.N<n> = {peak_rss_mb, rss_after_setup_mb, tokens_per_s, seconds} per length,
ratios.generate."peak_rss_N<long>/N<short>" (the issue's target: ≤ 1.1), notes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

import adapters
import common

NOTES = [
    "generate: one fresh subprocess per length; prompt consumed in chunks of 1024 tokens with the state carried, "
    "then one forward call of one token per generated token, torch.no_grad, batch 1, byte vocabulary",
    "peak_rss_mb = peak RSS (VmHWM) of that subprocess, torch itself included; rss_after_setup_mb = the same after "
    "building the model and a warm-up generation of 8 tokens",
]
WARMUP_TOKENS = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.BenchParser(__doc__)
    parser.add_model_options()
    parser.add_sized("--new-tokens", [256, 4096], [16, 256], type=common.int_list, help="tokens to generate, N")
    parser.add_sized("--prompt-tokens", 512, 32, type=int, help="prompt tokens consumed before generating")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: generate spec["N"] tokens after a prompt; this process's peak RSS and the speed."""
    from longssm.generate import Sampler, generate_ids

    common.set_threads(spec["threads"])
    torch.manual_seed(0)
    model, _ = adapters.build("longssm", adapters.VOCABS["byte"], spec["model"])
    model.eval()
    prompt = torch.randint(256, (spec["prompt_tokens"],), generator=torch.Generator().manual_seed(1)).tolist()

    def generate(n: int) -> None:
        for _ in generate_ids(model, prompt, n, Sampler(temperature=1.0), torch.Generator().manual_seed(0)):
            pass

    generate(WARMUP_TOKENS)
    rss_setup = common.peak_rss_mb()
    started = time.perf_counter()
    generate(spec["N"])
    seconds = time.perf_counter() - started
    return {"peak_rss_mb": common.peak_rss_mb(), "rss_after_setup_mb": rss_setup,
            "tokens_per_s": spec["N"] / seconds, "seconds": seconds}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """generate, ratios and notes (see the module docstring)."""
    per_n: dict[str, Any] = {}
    for n in args.new_tokens:
        spec = {"N": n, "prompt_tokens": args.prompt_tokens, "model": common.model_dims(args), "threads": args.threads}
        record = common.run_child([sys.executable, __file__, "--child", json.dumps(spec)], timeout=3600)
        common.progress(f"generate N={n}", record if isinstance(record, dict) else {"": record})
        per_n[f"N{n}"] = record
    short, long = (f"N{n}" for n in (min(args.new_tokens), max(args.new_tokens)))
    peak = {k: r["peak_rss_mb"] if isinstance(r, dict) else None for k, r in per_n.items()}
    ratios = {f"peak_rss_{long}/{short}": common.ratio(peak[long], peak[short])}
    return {"generate": per_n, "ratios": {"generate": ratios}, "notes": NOTES}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    config = {"model": common.model_config(args), "new_tokens": args.new_tokens, "prompt_tokens": args.prompt_tokens}
    return common.report(args, "generate_memory", config, lambda: measure(args))


if __name__ == "__main__":
    main()
