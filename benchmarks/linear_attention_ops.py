"""Speed and error of the chunked linear-attention ops beside Mamba-2's SSD at equal state size: forward + backward.

    python benchmarks/linear_attention_ops.py [--json OUT.json] [--quick] [--targets benchmarks/targets.json]

Each op runs its chunked CPU form with an initial state and returns its final state; one call = forward and the
backward of a fixed random linear function of the output and the final state, all inputs requiring gradients:

    ssd               Mamba-2's chunked SSD (``ops/ssd.py``), heads of p = 32, one group of B, C: state h p n
    delta_rule        DeltaNet's chunked WY form (``ops/delta_rule.py``), g = None
    gated_delta_rule  Gated DeltaNet's (the same op with the per-head decay)
    gla               GLA's secondary-chunk form (``ops/gla.py``)
with the linear-attention ops at 4 heads of K x V = 32 x 32 and the SSD at as many heads of p = 32 as give the same
state size (--state is the SSD's n; default 16: 8 heads of 32 x 16, 4096 per sample as the others: the families
table's d_model 128).
Shapes (--shapes, l x b): 16 x 32 (the T=16 training window of the families table), 256 x 4, 2048 x 1.

Errors: against the op's sequential reference in float64 (outputs, final state, every gradient), the largest
max|x - ref| / max|ref|. Prints one JSON object: ops.<shape>.<op>_ms, ops.<shape>.<op>_max_rel_err,
ratios.ops.<shape>."<op>/ssd" (time over the SSD's: <= 1 is at least as fast per token), notes, details.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

import common
from longssm.ops.delta_rule import delta_rule_chunked, delta_rule_ref
from longssm.ops.gla import gla_chunked, gla_ref
from longssm.ops.ssd import ssd_chunked, ssd_ref

OPS = ("ssd", "delta_rule", "gated_delta_rule", "gla")
NOTES = ["ops: forward + backward with an initial state and the final state, every input requiring gradients; "
         "equal state size per sample (SSD h p n = linear attention h K V); errors against the float64 sequential "
         "reference of each op",
         "figures: torch.utils.benchmark blocked_autorange, the median over the timed blocks"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.BenchParser(__doc__)
    parser.add_sized("--shapes", [(16, 32), (256, 4), (2048, 1)], [(16, 4), (40, 1)],
                     type=common.shape_pairs("LxB", "16x32,256x4"), help="sequence length x batch")
    parser.add_sized("--state", 16, 8, type=int, help="the SSD's state size n (sets its heads: 128 / n)")
    parser.add_sized("--chunk-size", 64, 16, type=int, help="chunk length of every op")
    return parser.parse_args(argv)


def op_inputs(op: str, l: int, b: int, n: int, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], Any, Any]:
    """(inputs, chunked op, reference op) of ``op`` at equal state size (see the module docstring)."""
    gen = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    if op == "ssd":
        h, p = max(1, 128 // n), 32                         # h p n = 4096 = 4 heads of 32 x 32
        x = {"x": rand(b, l, h, p), "dt": F.softplus(rand(b, l, h) - 2), "A": -torch.rand(h, generator=gen,
                                                                                          dtype=torch.float64) - 0.5,
             "B": rand(b, l, 1, n), "C": rand(b, l, 1, n), "initial_state": rand(b, h, p, n)}
        return {k: v.to(dtype) for k, v in x.items()}, ssd_chunked, ssd_ref
    h, dk, dv = 4, 32, 32
    x = {"q": F.normalize(rand(b, l, h, dk), dim=-1), "k": F.normalize(rand(b, l, h, dk), dim=-1),
         "v": rand(b, l, h, dv), "initial_state": rand(b, h, dk, dv)}
    if op == "gla":
        x["g"] = F.logsigmoid(rand(b, l, h, dk)) / 16
        return {k: v.to(dtype) for k, v in x.items()}, gla_chunked, gla_ref
    x["beta"] = torch.rand(b, l, h, generator=gen, dtype=torch.float64)
    if op == "gated_delta_rule":
        x["g"] = -torch.rand(b, l, h, generator=gen, dtype=torch.float64)
    return {k: v.to(dtype) for k, v in x.items()}, delta_rule_chunked, delta_rule_ref


def fwd_bwd(fn, inputs: dict[str, torch.Tensor], **kw) -> list[torch.Tensor]:
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    extra = {} if "x" in leaves else {"scale": 32 ** -0.5}
    y, s = fn(**leaves, **extra, **kw)
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)).sum() for t in (y, s))
    return [y.detach(), s.detach(), *torch.autograd.grad(loss, list(leaves.values()))]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, float | None]] = {}
    for l, b in args.shapes:
        key, fig = f"L{l}xB{b}", {}
        for op in OPS:
            inputs, chunked, ref = op_inputs(op, l, b, args.state, torch.float32)
            reference = fwd_bwd(ref, {k: v.double() for k, v in inputs.items()})
            got = fwd_bwd(chunked, inputs, chunk_size=args.chunk_size)
            fig[f"{op}_max_rel_err"] = max(float((g.double() - r).abs().max() / r.abs().max().clamp_min(1e-30))
                                           for g, r in zip(got, reference))
            timing = common.time_call(lambda c=chunked, i=inputs: fwd_bwd(c, i, chunk_size=args.chunk_size),
                                      args.threads, args.min_run_time)
            fig[f"{op}_ms"] = 1000 * timing.seconds
        figures[key] = fig
        ratios[key] = {f"{op}/ssd": common.ratio(fig[f"{op}_ms"], fig["ssd_ms"]) for op in OPS if op != "ssd"}
        common.progress(f"ops {key} ms", {op: fig[f"{op}_ms"] for op in OPS})
    return {"ops": figures, "ratios": {"ops": ratios}, "notes": NOTES}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config = {"shapes": args.shapes, "state": args.state, "chunk_size": args.chunk_size}
    return common.report(args, "linear_attention_ops", config, lambda: measure(args))


if __name__ == "__main__":
    main()
