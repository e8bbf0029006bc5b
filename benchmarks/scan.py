"""Scan speed and error: forward + backward of the Mamba-1 selective scan alone.

    python benchmarks/scan.py [--json OUT.json] [--quick] [--targets benchmarks/targets.json]

y = scan(u, delta, A, B, C) (no D, no gate) and its backward with a random dL/dy, at batch b, length l,
channels e and state size n (--batch, --length, --channels, --state):

    fast           longssm's blocked scan with its hand-written backward (``selective_scan_fast``)
    sequential     the time-major loop (``selective_scan_ref``)
    mambapy_pscan  mambapy's parallel scan ``pscan``, with the same discretisation and output contraction

Each is also checked against a float64 run of the sequential loop: per tensor (y and the five input gradients)
max|x - ref| / max|ref|, and the largest of those.

Prints one JSON object: scan.<impl>_ms (null: mambapy not installed), scan.max_rel_err (the fast scan's),
scan.max_rel_err_by_impl.<impl>, ratios.scan.fast_speedup_vs_{pscan,sequential}, notes, and details.scan
(shape, tokens_per_call; per implementation ms, tokens_per_s, repeats, max_rel_err, rel_err per tensor).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import adapters
import common
from longssm.ops.selective_scan import selective_scan_fast, selective_scan_ref

Scan = Callable[..., Tensor]
GRADIENTS = ("y", "du", "ddelta", "dA", "dB", "dC")
NOTES = [
    "scan: forward + backward of y = scan(u, delta, A, B, C) (no D, no gate), dL/dy random; max_rel_err = max "
    "over y and the five input gradients of max|x - ref| / max|ref|, ref = float64 sequential scan",
    "figures: torch.utils.benchmark blocked_autorange, the median over the timed blocks (details.scan.*.repeats)",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.BenchParser(__doc__)
    parser.add_sized("--batch", 8, 2, type=int, help="batch size b")
    parser.add_sized("--length", 1024, 64, type=int, help="sequence length l")
    parser.add_sized("--channels", 512, 32, type=int, help="channels e (d_inner)")
    parser.add_sized("--state", 16, 4, type=int, help="state size n (d_state)")
    return parser.parse_args(argv)


def fast_scan(*inputs: Tensor) -> Tensor:
    """y of longssm's blocked scan."""
    return selective_scan_fast(*inputs)[0]


def sequential_scan(*inputs: Tensor) -> Tensor:
    """y of the time-major loop."""
    return selective_scan_ref(*inputs)[0]


def implementations() -> dict[str, Scan | None]:
    """{name: y = scan(u, delta, A, B, C)}; None for mambapy's when it is not installed."""
    return {"fast": fast_scan, "sequential": sequential_scan,
            "mambapy_pscan": None if adapters.missing("mambapy") else adapters.pscan_scan}


def scan_inputs(b: int, e: int, n: int, l: int) -> list[Tensor]:
    """u, delta (b, l, e); A (e, n); B, C (b, l, n), with delta = softplus(.) in the Mamba init range ~[1e-3, 1e-1]."""
    g = torch.Generator().manual_seed(3)
    u = torch.randn(b, l, e, generator=g)
    delta = F.softplus(torch.randn(b, l, e, generator=g) - 4.0)
    A = -torch.arange(1, n + 1, dtype=torch.float32).expand(e, n) * torch.exp(0.1 * torch.randn(e, n, generator=g))
    B = torch.randn(b, l, n, generator=g)
    C = torch.randn(b, l, n, generator=g)
    return [u, delta, A, B, C]


def fwd_bwd(fn: Scan, inputs: list[Tensor], dy: Tensor) -> list[Tensor]:
    """[y, du, ddelta, dA, dB, dC] of y = fn(u, delta, A, B, C) with dL/dy = dy."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach()] + [x.grad for x in leaves]


def reference64(inputs: list[Tensor], dy: Tensor) -> list[Tensor]:
    """float64 sequential scan, one batch row at a time (rows are independent; dA sums over them)."""
    u, delta, A, B, C = (x.double() for x in inputs)
    rows = [fwd_bwd(sequential_scan, [u[i:i + 1], delta[i:i + 1], A, B[i:i + 1], C[i:i + 1]], dy[i:i + 1].double())
            for i in range(u.shape[0])]
    y, du, ddelta, _, dB, dC = (torch.cat([row[k] for row in rows]) for k in range(6))
    return [y, du, ddelta, sum(row[3] for row in rows), dB, dC]


def rel_errors(got: list[Tensor], ref: list[Tensor]) -> dict[str, float]:
    """Per tensor of ``GRADIENTS``: max |got - ref| / max |ref| (max-norm relative error)."""
    return {k: ((g.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
            for k, g, r in zip(GRADIENTS, got, ref)}


def scan_figure(fn: Scan, inputs: list[Tensor], dy: Tensor, ref: list[Tensor],
                args: argparse.Namespace) -> dict[str, Any]:
    """{ms, tokens_per_s, repeats, max_rel_err, rel_err} of one implementation."""
    errors = rel_errors(fwd_bwd(fn, inputs, dy), ref)
    timing = common.time_call(lambda: fwd_bwd(fn, inputs, dy), args.threads, args.min_run_time)
    return {"ms": 1000 * timing.seconds, "tokens_per_s": timing.rate(args.batch * args.length),
            "repeats": timing.repeats, "max_rel_err": max(errors.values()), "rel_err": errors}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """scan, ratios, notes and details (see the module docstring)."""
    inputs = scan_inputs(args.batch, args.channels, args.state, args.length)
    dy = torch.randn(args.batch, args.length, args.channels, generator=torch.Generator().manual_seed(4))
    ref = reference64(inputs, dy)
    runs = {name: fn and scan_figure(fn, inputs, dy, ref, args) for name, fn in implementations().items()}
    figures: dict[str, Any] = {f"{name}_ms": r and r["ms"] for name, r in runs.items()}
    figures["max_rel_err"] = runs["fast"]["max_rel_err"]
    figures["max_rel_err_by_impl"] = {name: r and r["max_rel_err"] for name, r in runs.items()}
    common.progress("scan", {k: v for k, v in figures.items() if k != "max_rel_err_by_impl"})
    details = {"shape": shape(args), "tokens_per_call": args.batch * args.length,
               **{name: r or "missing" for name, r in runs.items()}}
    missing = adapters.missing("mambapy")
    return {"scan": figures, "ratios": {"scan": ratios(figures)}, "notes": NOTES + ([missing] if missing else []),
            "details": {"scan": details}}


def ratios(figures: dict[str, Any]) -> dict[str, float | None]:
    """Speedups of the fast scan: the other implementation's time over its own."""
    return {"fast_speedup_vs_pscan": common.ratio(figures["mambapy_pscan_ms"], figures["fast_ms"]),
            "fast_speedup_vs_sequential": common.ratio(figures["sequential_ms"], figures["fast_ms"])}


def shape(args: argparse.Namespace) -> dict[str, int]:
    """{"b", "e", "n", "l"} as the result files name them."""
    return {"b": args.batch, "e": args.channels, "n": args.state, "l": args.length}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return common.report(args, "scan", {"scan": shape(args)}, lambda: measure(args))


if __name__ == "__main__":
    main()
