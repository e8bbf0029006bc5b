"""The GPU check: fast kernels against our chunked ops and the sequential references, on one CUDA GPU.

    python benchmarks/gpu_check.py [--json OUT.json] [--quick] [--device cuda:0]

Written before any GPU was lent to this project, so that the first machine with one checks every kernel path in one
command. Sections (issue 26 adds the Triton Mamba-1 scan, mamba_ssm's Mamba-2, training speed and DDP):

    fla     fla-core's chunk_delta_rule, chunk_gated_delta_rule and chunk_gla through ``ops/fla_kernels.py`` (the
            ``model.scan fla`` path) against ``ops/delta_rule.py`` / ``ops/gla.py``'s chunked ops in float64 on the
            same GPU: outputs, final states and the gradients of a fixed random linear function of both w.r.t.
            every input (the initial state included), with float32 and bfloat16 inputs (relative error, norm);
            then the time of one forward + backward of fla's kernel and of our chunked op (float32) at
            B x L x H x K x V = 8 x 2048 x 8 x 64 x 64 (--quick: 2 x 256 x 2 x 32 x 32).
    mamba3  mamba_ssm's ``mamba3_siso_combined`` through ``ops/mamba3_mamba_ssm.py`` (the ``model.scan mamba_ssm``
            path of the mamba3 family) against ``ops/mamba3.py``'s chunked op in float64: ``self_check`` (y, the
            four final states and every input's gradient, from a non-zero state, to 5e-2: the kernel rounds its
            inputs to bfloat16; on a failure it names the tensor); then the time of one forward + backward of the
            kernel and of our chunked op (float32) at B x L x H x P x N = 8 x 2048 x 8 x 64 x 64 (--quick: 2 x 256
            x 2 x 16 x 16). Triton's interpreter cannot run the kernel's backward (its bfloat16 arithmetic), so
            this is where the kernel's gradients are checked.

Prints one JSON object: fla.<kernel>.<dtype>.<tensor> = relative error, fla.<kernel>.ok (every error below the
tolerance of its dtype: 2e-3 float32, 5e-2 bfloat16), speed.<kernel>.{fla_ms, chunked_ms, "chunked/fla"}, and a
short table on stderr; mamba3.{self_check, ok, speed}. Without a CUDA device it prints {"skipped": why} and exits
0; a section whose package does not import is {"skipped": why}.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

import common

TOLERANCE = {"float32": 2e-3, "bfloat16": 5e-2}


def problems(b: int, l: int, h: int, dk: int, dv: int, seed: int = 0) -> dict[str, tuple[Any, Any, dict]]:
    """kernel -> (fla path, our chunked op, float64 CPU inputs)."""
    from longssm.ops.delta_rule import delta_rule_chunked
    from longssm.ops.fla_kernels import fla_delta_rule, fla_gla
    from longssm.ops.gla import gla_chunked

    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    base = {"q": F.normalize(rand(b, l, h, dk), dim=-1), "k": F.normalize(rand(b, l, h, dk), dim=-1),
            "v": rand(b, l, h, dv), "initial_state": rand(b, h, dk, dv)}
    beta = torch.rand(b, l, h, generator=gen, dtype=torch.float64)
    return {
        "chunk_delta_rule": (fla_delta_rule, delta_rule_chunked, dict(base, beta=beta)),
        "chunk_gated_delta_rule": (fla_delta_rule, delta_rule_chunked,
                                   dict(base, beta=beta, g=-torch.rand(b, l, h, generator=gen, dtype=torch.float64))),
        "chunk_gla": (fla_gla, gla_chunked, dict(base, g=F.logsigmoid(rand(b, l, h, dk)) / 8)),
    }


def outputs_and_grads(op, inputs: dict, dtype: torch.dtype, device: torch.device, scale: float) -> list[torch.Tensor]:
    leaves = {k: v.to(device, dtype).requires_grad_() for k, v in inputs.items()}
    o, s = op(**leaves, scale=scale)
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(device) for t in (o, s)]
    loss = (o.double() * weights[0]).sum() + (s.double() * weights[1]).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves.values())]
    return [t.detach().double() for t in (o, s, *grads)]


def check(device: torch.device, shape: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (fast, ours, inputs) in problems(*shape).items():
        scale = shape[3] ** -0.5
        labels = ["output", "final_state", *(f"grad_{k}" for k in inputs)]
        ref = outputs_and_grads(ours, inputs, torch.float64, device, scale)
        out[name] = {}
        for dtype in (torch.float32, torch.bfloat16):
            got = outputs_and_grads(fast, inputs, dtype, device, scale)
            errors = {label: float((g - r).norm() / r.norm().clamp_min(1e-12)) for label, g, r in zip(labels, got, ref)}
            key = str(dtype).removeprefix("torch.")
            out[name][key] = errors
            out[name][f"{key}_ok"] = all(e < TOLERANCE[key] for e in errors.values())
        out[name]["ok"] = out[name]["float32_ok"] and out[name]["bfloat16_ok"]
    return out


def seconds(call, device: torch.device, repeats: int = 10) -> float:
    for _ in range(2):
        call()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def speed(device: torch.device, shape: tuple[int, ...]) -> dict[str, Any]:
    out = {}
    for name, (fast, ours, inputs) in problems(*shape).items():
        leaves = {k: v.to(device, torch.float32).requires_grad_() for k, v in inputs.items()}

        def step(op, leaves=leaves, **kw):
            o, s = op(**leaves, scale=shape[3] ** -0.5, **kw)
            (o.sum() + s.sum()).backward()

        fla_s = seconds(lambda op=fast: step(op), device)
        ours_s = seconds(lambda op=ours: step(op, chunk_size=64), device)
        out[name] = {"fla_ms": 1e3 * fla_s, "chunked_ms": 1e3 * ours_s, "chunked/fla": ours_s / fla_s}
    return out


def mamba3_section(device: torch.device, quick: bool) -> dict[str, Any]:
    """self_check's verdict, every tensor's error at the self-check's problem, and the speed of kernel vs chunked."""
    from longssm.ops import dispatch, mamba3_mamba_ssm
    from longssm.ops.mamba3 import Mamba3State, mamba3_chunked

    if (reason := dispatch.mamba_ssm_unavailable("mamba_ssm_mamba3")) is not None:
        return {"skipped": f"mamba_ssm's Mamba-3 kernel does not import: {reason}"}
    verdict = mamba3_mamba_ssm.self_check(device)
    b, l, h, p, n, S = (2, 256, 2, 16, 16, 4) if quick else (8, 2048, 8, 64, 64, 16)
    gen = torch.Generator().manual_seed(0)
    shapes = [(b, l, h, p), (b, l, h), (b, l, h), (b, l, h), (b, l, h, n), (b, l, h, n), (b, l, h, S), (h,)]
    inputs = [torch.randn(shape, generator=gen) for shape in shapes]
    inputs[1] = F.softplus(inputs[1]) * 0.1
    inputs[2] = -inputs[1] * torch.rand(b, l, h, generator=gen)
    leaves = [t.to(device).requires_grad_() for t in inputs]
    start = Mamba3State(*(torch.zeros(b, h, *d, device=device) for d in ((S,), (p, n), (n,), (p,))))

    def step(op) -> None:
        y, final = op(*leaves, initial_state=start, chunk_size=64)
        (y.sum() + final.ssm.sum()).backward()

    kernel_s = seconds(lambda: step(mamba3_mamba_ssm.mamba3_mamba_ssm), device)
    ours_s = seconds(lambda: step(mamba3_chunked), device)
    return {"self_check": verdict or "ok", "ok": verdict is None,
            "speed": {"kernel_ms": 1e3 * kernel_s, "chunked_ms": 1e3 * ours_s, "chunked/kernel": ours_s / kernel_s},
            "speed_shape": [b, l, h, p, n, S]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.BenchParser(__doc__)
    parser.add_argument("--device", default="cuda", help="the CUDA device (default cuda)")
    args = parser.parse_args(argv)

    def measure() -> dict[str, Any]:
        device = torch.device(args.device)
        from longssm.ops.fla_kernels import fla_unavailable

        if device.type != "cuda" or not torch.cuda.is_available():
            return {"skipped": f"no CUDA device ({args.device}; torch.cuda.is_available() = "
                               f"{torch.cuda.is_available()})", "ratios": {}, "notes": []}
        mamba3 = mamba3_section(device, args.quick)
        print(f"mamba3 (mamba_ssm) {mamba3}", file=sys.stderr)
        result = {"mamba3": mamba3, "device_name": torch.cuda.get_device_name(device)}
        if (reason := fla_unavailable()) is not None:
            return {**result, "fla": {"skipped": f"fla-core does not import: {reason}"}, "ratios": {}, "notes": []}
        small, large = (2, 37, 2, 16, 8), ((2, 256, 2, 32, 32) if args.quick else (8, 2048, 8, 64, 64))
        fla = check(device, small)
        timing = speed(device, large)
        for name, figures in fla.items():
            print(f"{name:24s} float32 ok {figures['float32_ok']!s:5s} bfloat16 ok {figures['bfloat16_ok']!s:5s} "
                  f"fla {timing[name]['fla_ms']:.2f} ms, chunked {timing[name]['chunked_ms']:.2f} ms", file=sys.stderr)
        return {**result, "fla": fla, "speed": timing,
                "ratios": {"speed": {k: v["chunked/fla"] for k, v in timing.items()}},
                "notes": [f"fla: correctness at B,L,H,K,V = {small}, speed at {large}"]}

    return common.report(args, "gpu_check", {"device": args.device}, measure)


if __name__ == "__main__":
    main()
