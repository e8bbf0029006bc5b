"""Evaluation speed and peak memory vs sequence length, each (implementation, length) in a fresh process.

    python benchmarks/eval_speed.py [--json OUT.json] [--quick] [--lengths 1024,4096,32768] [--metrics ...]

A fresh subprocess builds the Mamba-1 model (adapters.py) with the --vocab vocabulary, evaluates one sequence
of L random tokens under torch.no_grad (batch 1), and reports tokens/s and its peak RSS (VmHWM of that
process, torch itself included), so no length's allocations hide another's:

    longssm   the library's evaluators, with the settings of ``longssm.config.EvalConfig`` (``eval_config``):
                ppl_vs_length          next-token NLL in chunks of --chunk tokens, the state carried
                position_ppl           the same, cut at the state-statistics positions, with the stats hook
                effective_remembrance  at T = L, one sequence (about L*log2(L) tokens fed)
    peers     one full-sequence forward + NLL (they cannot carry an SSM state across calls), at the lengths
              they reach: a length whose peak RSS or time, projected linearly from the previous length,
              exceeds --peer-mem-cap-mb or --peer-time-cap is skipped

Prints one JSON object: eval.L<L> (longssm, ppl_vs_length), eval_peers.<peer>.L<L> (null: not installed),
eval_metrics.<metric>.L<L> (the other --metrics, when asked for); each a record {tokens_per_s, peak_rss_mb,
rss_after_setup_mb, seconds_per_sequence, repeats, chunk} or "skipped: reason". ratios.eval: longest over
shortest length of longssm's peak RSS and tokens/s. Then notes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import adapters
import common
from longssm.config import EvalConfig
from longssm.evaluate import remembrance
from longssm.evaluate.perplexity import default_tokens_per_forward, sequence_losses
from longssm.evaluate.registry import normalise_metrics
from longssm.evaluate.state_stats import StateStats

Subject = tuple[str, str]
"""(implementation, metric): one chain of children over the lengths."""
NOTES = [
    "eval: batch 1, forward + NLL under torch.no_grad, one fresh subprocess per (implementation, metric, length); "
    "longssm through its evaluators in chunks with the state carried, peers in one full-sequence forward; "
    "peak_rss_mb = peak RSS (VmHWM) of that subprocess, torch itself included",
    "figures: torch.utils.benchmark blocked_autorange, the median over the timed blocks (*.repeats)",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.BenchParser(__doc__)
    parser.add_model_options()
    parser.add_sized("--lengths", [1024, 4096, 32768], [64, 256], type=common.int_list, help="sequence lengths L")
    parser.add_sized("--chunk", EvalConfig().chunk, 64, type=int, help="longssm: tokens per chunk (EvalConfig.chunk)")
    parser.add_argument("--batch-tokens", type=int, default=None,
                        help="longssm: rows x chunk tokens per forward (EvalConfig.batch_tokens; default: "
                             "from --vocab)")
    parser.add_names("--metrics", WORKLOADS, "longssm evaluators", default=["ppl_vs_length"])
    parser.add_argument("--vocab", choices=list(adapters.VOCABS), default="byte", help="vocabulary (default byte)")
    parser.add_names("--peers", adapters.PEER_MODULES, "peers measured beside longssm")
    parser.add_argument("--peer-mem-cap-mb", type=float, default=4096.0,
                        help="a peer skips a length whose projected peak RSS exceeds this (default 4096)")
    parser.add_sized("--peer-time-cap", 120.0, 20.0, type=float,
                     help="a peer skips a length whose projected seconds per sequence exceed this")
    parser.add_sized("--jobs", 1, 3, type=int, help="chains of children run side by side (timings get noisier)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """The evaluation settings, as ``longssm eval`` takes them: the one place where the benchmark builds them.

    batch_tokens is resolved here (EvalConfig's null = chosen from the vocabulary), so children get a number.
    """
    batch_tokens = args.batch_tokens or default_tokens_per_forward(adapters.VOCABS[args.vocab])
    return EvalConfig(metrics=normalise_metrics(args.metrics), lengths=args.lengths, chunk=args.chunk,
                      batch_tokens=batch_tokens, device="cpu", threads=args.threads)


# ----------------------------------------------------------------------------------------------------------
# In the child: one evaluation, timed.

Workload = Callable[[nn.Module, Tensor, dict[str, Any]], tuple[Callable[[], object], int]]
"""(model, tokens (1, L + 1), spec) -> (one evaluation, tokens fed per evaluation)."""


def ppl_vs_length(model: nn.Module, tokens: Tensor, spec: dict[str, Any]) -> tuple[Callable[[], object], int]:
    """Next-token NLL of the sequence in chunks, the state carried (the perplexity pass of ``longssm eval``)."""
    return lambda: sequence_losses(model, tokens, spec["chunk"], spec["batch_tokens"]), spec["L"]


def position_ppl(model: nn.Module, tokens: Tensor, spec: dict[str, Any]) -> tuple[Callable[[], object], int]:
    """The same pass, cut at the state-statistics positions, with the statistics hook (position_ppl, state_stats)."""

    def run() -> None:
        stats = StateStats(spec["L"])
        sequence_losses(model, tokens, spec["chunk"], spec["batch_tokens"], cuts=stats.positions, on_segment=stats)

    return run, spec["L"]


def effective_remembrance(model: nn.Module, tokens: Tensor, spec: dict[str, Any]) -> tuple[Callable[[], object], int]:
    """Effective Remembrance at T = L over the one sequence: every truncated context of the log grid."""

    def run() -> None:
        remembrance.effective_remembrance(model, tokens[0].numpy(), spec["L"], 1, chunk=spec["chunk"],
                                          tokens_per_forward=spec["batch_tokens"])

    return run, remembrance.effrem_cost(spec["L"], 1)


WORKLOADS: dict[str, Workload] = {"ppl_vs_length": ppl_vs_length, "position_ppl": position_ppl,
                                  "effective_remembrance": effective_remembrance}


def full_sequence_nll(forward: adapters.Forward, tokens: Tensor) -> float:
    """A peer's evaluation: one forward over the whole sequence, summed next-token NLL."""
    logits, _ = forward(tokens[:, :-1], None)
    return F.cross_entropy(logits.flatten(0, 1), tokens[0, 1:], reduction="sum").item()


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: one evaluation of a random sequence of spec["L"] tokens, timed; this process's peak RSS."""
    common.set_threads(spec["threads"])
    torch.manual_seed(0)
    model, forward = adapters.build(spec["impl"], spec["vocab"], spec["model"])
    model.eval()
    tokens = torch.randint(spec["vocab"], (1, spec["L"] + 1), generator=torch.Generator().manual_seed(2))
    if spec["impl"] == "longssm":
        run, fed = WORKLOADS[spec["metric"]](model, tokens, spec)
    else:
        run, fed = (lambda: full_sequence_nll(forward, tokens)), spec["L"]
    with torch.no_grad():
        forward(tokens[:, :min(spec["L"], spec["chunk"])], None)  # lazy initialisation, at the chunk size
        rss_setup = common.peak_rss_mb()
        timing = common.time_call(run, spec["threads"], spec["min_run_time"])
    return {"tokens_per_s": timing.rate(fed), "peak_rss_mb": common.peak_rss_mb(), "rss_after_setup_mb": rss_setup,
            "seconds_per_sequence": timing.seconds, "repeats": timing.repeats,
            "chunk": spec["chunk"] if spec["impl"] == "longssm" else spec["L"]}


# ----------------------------------------------------------------------------------------------------------
# In the parent: chains of children over the lengths.


def run_child(subject: Subject, L: int, cfg: EvalConfig, args: argparse.Namespace) -> dict[str, Any] | str:
    """A child's record, or "skipped: reason". Its time limit allows a warm-up and a timed call at the time cap."""
    spec = {"impl": subject[0], "metric": subject[1], "L": L, "vocab": adapters.VOCABS[args.vocab],
            "model": common.model_dims(args), "chunk": cfg.chunk, "batch_tokens": cfg.batch_tokens,
            "threads": cfg.threads, "min_run_time": args.min_run_time}
    return common.run_child([sys.executable, __file__, "--child", json.dumps(spec)],
                            timeout=4 * args.peer_time_cap + 120)


def chain(subject: Subject, cfg: EvalConfig, args: argparse.Namespace) -> dict[str, Any]:
    """{"L<n>": record | "skipped: reason"} of one subject, shortest length first (peers stop at their caps)."""
    out: dict[str, Any] = {}
    last: tuple[int, dict[str, Any]] | None = None
    for L in cfg.lengths:
        reason = None if subject[0] == "longssm" else peer_projection(last, L, args)
        record = f"skipped: {reason}" if reason else run_child(subject, L, cfg, args)
        if isinstance(record, dict):
            last = (L, record)
        out[f"L{L}"] = record
        common.progress(f"eval {'/'.join(subject)} L={L}", record if isinstance(record, dict) else {"": record})
    return out


def peer_projection(last: tuple[int, dict[str, Any]] | None, L: int, args: argparse.Namespace) -> str | None:
    """Why a peer should not attempt length L, from its measurement at the previous length (linear growth)."""
    if last is None:
        return None
    L0, r = last
    grow = L / L0
    rss = r["rss_after_setup_mb"] + (r["peak_rss_mb"] - r["rss_after_setup_mb"]) * grow
    if rss > args.peer_mem_cap_mb:
        return (f"projected peak RSS {rss:.0f} MB > cap {args.peer_mem_cap_mb:.0f} MB "
                f"(measured {r['peak_rss_mb']:.0f} MB at L={L0}, growth linear in L)")
    seconds = r["seconds_per_sequence"] * grow
    if seconds > args.peer_time_cap:
        return (f"projected {seconds:.0f} s per sequence > cap {args.peer_time_cap:.0f} s "
                f"(measured {r['seconds_per_sequence']:.1f} s at L={L0})")
    return None


def measure(cfg: EvalConfig, args: argparse.Namespace) -> dict[str, Any]:
    """eval, eval_peers, eval_metrics, ratios and notes (see the module docstring)."""
    peers = [p for p in args.peers if not adapters.missing(p)]
    subjects = [("longssm", m) for m in cfg.metrics] + [(p, "ppl_vs_length") for p in peers]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        chains = dict(zip(subjects, pool.map(lambda s: chain(s, cfg, args), subjects)))
    result: dict[str, Any] = {}
    if ("longssm", "ppl_vs_length") in chains:
        result["eval"] = chains[("longssm", "ppl_vs_length")]
    result["eval_peers"] = {p: chains.get((p, "ppl_vs_length")) for p in args.peers}
    others = {metric: per_L for (impl, metric), per_L in chains.items()
              if impl == "longssm" and metric != "ppl_vs_length"}
    if others:
        result["eval_metrics"] = others
    result["ratios"] = {"eval": ratios(result.get("eval", {}))}
    result["notes"] = NOTES + adapters.notes(list(args.peers))
    return result


def ratios(per_L: dict[str, Any]) -> dict[str, float | None]:
    """Longest over shortest length: {"peak_rss_L<long>/L<short>": ..., "tokens_per_s_L<long>/L<short>": ...}."""
    if not per_L:
        return {}
    first, last = min(per_L, key=lambda k: int(k[1:])), max(per_L, key=lambda k: int(k[1:]))
    long, short = (r if isinstance(r, dict) else {} for r in (per_L[last], per_L[first]))
    return {f"{name}_{last}/{first}": common.ratio(long.get(key), short.get(key))
            for name, key in (("peak_rss", "peak_rss_mb"), ("tokens_per_s", "tokens_per_s"))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    cfg = eval_config(args)
    config = {"model": common.model_config(args), "eval_lengths": cfg.lengths, "eval_chunk": cfg.chunk,
              "eval_batch_tokens": cfg.batch_tokens, "metrics": cfg.metrics, "eval_vocab": args.vocab}
    return common.report(args, "eval_speed", config, lambda: measure(cfg, args))


if __name__ == "__main__":
    main()
