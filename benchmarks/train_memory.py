"""Peak memory of one training step at each window length T, the same model and batch size B throughout.

    python benchmarks/train_memory.py --family mamba --lengths 16,64,256,1024 --json OUT.json [--smoke]

Each T runs in a fresh child process: it builds the --family model (the sizes below, --vocab vocabulary,
float32, random weights) and its optimizer, then runs --steps training steps on B random (T + 1)-token windows,
each starting from the previous step's detached final state (stateful TBPTT): forward, cross-entropy,
backward, fused AdamW step (weight decay as in ``longssm.train.param_groups``). It reports

    CPU   train_peak_mb = peak RSS (VmHWM) of that process, torch itself included; setup_mb = the same just
          before the first step (model, optimizer and batch built)
    CUDA  train_peak_mb = torch.cuda.max_memory_allocated; setup_mb = torch.cuda.memory_allocated before the
          first step

and step_mb = train_peak_mb − setup_mb, what the training step itself adds: the activations kept for the
backward pass grow as B·T, the weights, gradients and optimizer moments do not depend on T.

Prints one JSON object: train_peak_mb {"T": MB}, setup_mb, step_mb, device, model (family, sizes, vocab,
batch_size, parameters), ratios.train_memory ("step_mb_T<long>/T<short>", "peak_mb_T<long>/T<short>"), notes.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
import torch.nn.functional as F

import common
from longssm.config import ModelConfig
from longssm.models import build_model
from longssm.models.base import detach_state
from longssm.models.registry import family_names
from longssm.train import param_groups

NOTES = [
    "train_memory: one fresh subprocess per T; --steps training steps (forward + cross-entropy + backward + fused "
    "AdamW) on random tokens, each from the previous step's detached final state, the same B at every T",
    "CPU: train_peak_mb = peak RSS (VmHWM) of that subprocess, torch itself included; CUDA: "
    "torch.cuda.max_memory_allocated; step_mb = train_peak_mb - setup_mb (memory before the first step)",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.BenchParser(__doc__)
    parser.add_argument("--smoke", dest="quick", action="store_true", help="the CI smoke test: the same as --quick")
    parser.add_argument("--family", default="mamba", choices=family_names(), help="model family (default mamba)")
    parser.add_model_options()
    parser.add_sized("--lengths", [16, 64, 256, 1024], [16, 64], type=common.int_list, help="window lengths T")
    parser.add_sized("--batch-size", 8, 2, type=int, help="streams B, the same at every T")
    parser.add_sized("--vocab", 256, 256, type=int, help="vocabulary size (256: bytes, 50257: GPT-2)")
    parser.add_sized("--steps", 3, 2, type=int, help="training steps measured (the first allocates the optimizer)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def memory_mb(device: torch.device, peak: bool) -> float:
    """CUDA: (max_)memory_allocated; CPU: the process's peak RSS (VmHWM; the current RSS is no lower)."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)) / 2**20
    return common.peak_rss_mb()


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: spec["steps"] training steps at T = spec["T"]; the memory before them and at the peak."""
    common.set_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=spec["family"], vocab_size=spec["vocab"], **spec["model"]), device=device)
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, fused=True)
    B, T = spec["batch_size"], spec["T"]
    tokens = torch.randint(spec["vocab"], (B, T + 1), generator=torch.Generator().manual_seed(1)).to(device)
    state = model.initial_state(B, device=device)
    setup = memory_mb(device, peak=False)
    for _ in range(spec["steps"]):
        logits, final = model(tokens[:, :-1], state)
        F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state = detach_state(final)
    peak = memory_mb(device, peak=True)
    return {"train_peak_mb": peak, "setup_mb": setup, "step_mb": peak - setup,
            "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """train_peak_mb, setup_mb, step_mb, device, model, ratios and notes (see the module docstring)."""
    records: dict[str, dict[str, Any] | str] = {}
    for T in args.lengths:
        spec = {"T": T, "family": args.family, "model": common.model_dims(args), "vocab": args.vocab,
                "batch_size": args.batch_size, "steps": args.steps, "device": args.device, "threads": args.threads}
        records[str(T)] = common.run_child([sys.executable, __file__, "--child", json.dumps(spec)], timeout=3600)
        common.progress(f"train_memory {args.family} T={T} B={args.batch_size}",
                        records[str(T)] if isinstance(records[str(T)], dict) else {"": records[str(T)]})

    def figure(name: str) -> dict[str, float | str]:
        return {T: r[name] if isinstance(r, dict) else r for T, r in records.items()}

    short, long = str(min(args.lengths)), str(max(args.lengths))
    peak, step = figure("train_peak_mb"), figure("step_mb")
    measured = [r for r in records.values() if isinstance(r, dict)]
    return {
        "train_peak_mb": peak, "setup_mb": figure("setup_mb"), "step_mb": step, "device": args.device,
        "model": {"family": args.family, **common.model_dims(args), "vocab_size": args.vocab,
                  "batch_size": args.batch_size, "parameters": measured[0]["parameters"] if measured else None},
        "ratios": {"train_memory": {
            f"step_mb_T{long}/T{short}": common.ratio(_number(step[long]), _number(step[short])),
            f"peak_mb_T{long}/T{short}": common.ratio(_number(peak[long]), _number(peak[short]))}},
        "notes": NOTES,
    }


def _number(value: float | str) -> float | None:
    """A figure, or None for a "skipped: ..." record."""
    return value if isinstance(value, float) else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    config = {"family": args.family, "lengths": args.lengths, "batch_size": args.batch_size, "steps": args.steps}
    return common.report(args, "train_memory", config, lambda: measure(args))


if __name__ == "__main__":
    main()
