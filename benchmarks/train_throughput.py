"""Training throughput: tokens/s of one optimizer step, longssm against mambapy, transformers and the floor.

    python benchmarks/train_throughput.py [--json OUT.json] [--quick] [--targets benchmarks/targets.json]

One step = forward + cross-entropy + backward + AdamW step (lr 1e-4), identical for every implementation, on
random tokens; tokens/s counts the B*T input tokens of a step. Every implementation runs the same Mamba-1
model (adapters.py) at each window shape TxB (--shapes), for the byte (256) and GPT-2 (50257) vocabularies:

    longssm                 stateful TBPTT: each step starts from the detached final state of the previous one
    mambapy, transformers   every step starts from zeros (they take no initial state)
    floor                   (gpt2 only) the same step without the model body: the vocabulary projection alone

    families                (byte only) longssm's other families at the same d_model and n_layers (--families):
                            Mamba-2 (expand, d_state as Mamba-1's: state e*N per layer) and the linear-attention
                            families with heads of 32 x 32 (d_model / 32 heads: the same state size), sliding-window
                            attention (heads of 32, window 64) and the hybrid mamba+swa (alternating layers)

Prints one JSON object: train_tokens_per_s.<vocab>.T<T>.<impl> (null: peer not installed),
ratios.train.<vocab>.T<T>."longssm/<impl>", family_tokens_per_s.byte.T<T>.<family>,
ratios.families.byte.T<T>."<family>/mamba2", notes, and details.train.<vocab>.T<T> (batch_size; per
implementation tokens_per_s, ms_per_step, repeats = timed blocks, steps_per_run, params).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import adapters
import common

FAMILIES = ("mamba2", "mamba3", "deltanet", "gated_deltanet", "gla", "swa", "mamba+swa")
"""The families of ``--families`` (default: all); Mamba-1 is the ``longssm`` row, Mamba-2 the reference of ratios."""
FLOOR_VOCABS = ("gpt2",)
"""Vocabularies whose projection is large enough for the floor to matter."""
NOTES = [
    "train: one step = forward + cross-entropy + backward + AdamW step (lr 1e-4), identical for every "
    "implementation, on random tokens; tokens/s counts B*T input tokens per step",
    "train: longssm carries the detached final state of the previous step (stateful TBPTT); mambapy and "
    "transformers start every step from zeros (they take no initial state)",
    "train: mambapy's LM head is tied to its embedding here (it unties by default) so all models have the "
    "same parameters; transformers MambaForCausalLM runs without mamba_ssm (its sequential CPU loop)",
    "train: floor = embedding -> RMSNorm -> tied head, the same step without the model body (gpt2 only)",
    "figures: torch.utils.benchmark blocked_autorange, the median over the timed blocks "
    "(details.train.*.repeats)",
]


shapes = common.shape_pairs("TxB window", "16x64,256x8")
"""``"16x64,256x8"`` -> [(16, 64), (256, 8)]: (T, B) pairs."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.BenchParser(__doc__)
    parser.add_model_options()
    parser.add_sized("--shapes", [(16, 64), (256, 8)], [(16, 4), (32, 2)], type=shapes,
                     help="training windows TxB (window length x batch size)")
    parser.add_names("--vocabs", adapters.VOCABS, "vocabularies")
    parser.add_names("--peers", adapters.PEER_MODULES, "peers measured beside longssm")
    parser.add_names("--families", FAMILIES, "longssm families measured beside its Mamba-1 (byte vocabulary)")
    return parser.parse_args(argv)


def make_step(model: torch.nn.Module, forward: adapters.Forward, vocab: int, T: int, B: int) -> Callable[[], None]:
    """One training step per call, on four cycling random (B, T + 1) batches; a returned state is carried."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    batches = itertools.cycle([torch.randint(vocab, (B, T + 1), generator=generator) for _ in range(4)])
    state = None

    def step() -> None:
        nonlocal state
        tokens = next(batches)
        logits, final = forward(tokens[:, :-1], state)
        if final is not None:  # stateful TBPTT: the next window starts from this one's detached final state
            state = {k: v.detach() for k, v in final.items()}
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def train_rate(impl: str, vocab: int, T: int, B: int, args: argparse.Namespace) -> dict[str, Any]:
    """{tokens_per_s, ms_per_step, repeats, steps_per_run, params} of ``impl``'s training step (an implementation,
    or ``family:<name>``: longssm's model of that family)."""
    torch.manual_seed(0)
    if impl.startswith("family:"):
        model, forward = adapters.build_longssm(vocab, common.model_dims(args), impl.partition(":")[2])
    else:
        model, forward = adapters.build(impl, vocab, common.model_dims(args))
    model.train()
    timing = common.time_call(make_step(model, forward, vocab, T, B), args.threads, args.min_run_time)
    return {"tokens_per_s": timing.rate(B * T), "ms_per_step": 1000 * timing.seconds, "repeats": timing.repeats,
            "steps_per_run": timing.calls_per_block, "params": adapters.n_params(model)}


def implementations(vocab_name: str, args: argparse.Namespace) -> list[str]:
    """longssm, the chosen peers, and the floor where the vocabulary is large."""
    return ["longssm", *args.peers] + (["floor"] if vocab_name in FLOOR_VOCABS else [])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """train_tokens_per_s, ratios, notes and details (see the module docstring)."""
    figures: dict[str, dict[str, dict[str, float | None]]] = {}
    details: dict[str, dict[str, dict[str, Any]]] = {}
    for vocab_name in args.vocabs:
        for T, B in args.shapes:
            runs = {impl: None if adapters.missing(impl) else train_rate(impl, adapters.VOCABS[vocab_name], T, B, args)
                    for impl in implementations(vocab_name, args)}
            figures.setdefault(vocab_name, {})[f"T{T}"] = {i: r and r["tokens_per_s"] for i, r in runs.items()}
            details.setdefault(vocab_name, {})[f"T{T}"] = {"batch_size": B,
                                                           **{i: r or "missing" for i, r in runs.items()}}
            common.progress(f"train {vocab_name} T={T} B={B} tokens/s", figures[vocab_name][f"T{T}"])
    families = measure_families(args, details)
    return {"train_tokens_per_s": figures, "family_tokens_per_s": families,
            "ratios": {"train": ratios(figures), "families": family_ratios(families)},
            "notes": NOTES + adapters.notes(list(args.peers)), "details": {"train": details}}


def measure_families(args: argparse.Namespace, details: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """{"byte": {"T<T>": {family: tokens/s}}} for ``--families`` (Mamba-1 is the ``longssm`` figure); each run's
    details go under ``details[byte][T<T>]["family:<name>"]``."""
    if not args.families or "byte" not in args.vocabs:
        return {}
    out: dict[str, dict[str, float]] = {}
    for T, B in args.shapes:
        runs = {family: train_rate(f"family:{family}", adapters.VOCABS["byte"], T, B, args) for family in args.families}
        out[f"T{T}"] = {family: run["tokens_per_s"] for family, run in runs.items()}
        details["byte"][f"T{T}"].update({f"family:{family}": run for family, run in runs.items()})
        common.progress(f"train byte T={T} B={B} families tokens/s", out[f"T{T}"])
    return {"byte": out}


def family_ratios(families: dict[str, Any]) -> dict[str, Any]:
    """{"byte": {"T<T>": {"<family>/mamba2": tokens/s over Mamba-2's}}} (empty without Mamba-2 among them)."""
    return {vocab: {key: {f"{f}/mamba2": common.ratio(fig[f], fig["mamba2"]) for f in fig if f != "mamba2"}
                    for key, fig in per_T.items() if "mamba2" in fig}
            for vocab, per_T in families.items()}


def ratios(figures: dict[str, dict[str, dict[str, float | None]]]) -> dict[str, Any]:
    """{vocab: {"T<T>": {"longssm/<impl>": longssm tokens/s over impl's}}}, None where a figure is missing."""
    return {vocab: {key: {f"longssm/{impl}": common.ratio(fig["longssm"], fig[impl])
                          for impl in fig if impl != "longssm"}
                    for key, fig in per_T.items()}
            for vocab, per_T in figures.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config = {"model": common.model_config(args), "train_TB": args.shapes, "vocabs": args.vocabs}
    return common.report(args, "train_throughput", config, lambda: measure(args))


if __name__ == "__main__":
    main()
