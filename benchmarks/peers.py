"""longssm against its peers on one machine, in one run: training throughput, long-context evaluation, scan speed.

    python benchmarks/peers.py --json OUT.json [--smoke] [--repeats N] [--only train,eval,scan]

Prints ONE JSON object (and writes it to ``--json``). Every implementation runs the same Mamba-1 model
(d_model 256, 4 layers, d_state 16, expand 2, d_conv 4, tied embedding/head, float32) with the same threads:

train   tokens/s of one optimizer step (forward + cross-entropy + backward + AdamW step, identical for all)
        at T=16, B=64 and T=256, B=8, for the byte (256) and GPT-2 (50257) vocabularies:
          longssm       stateful TBPTT: each step starts from the detached final state of the previous step
          mambapy       ``mambapy.lm.LM`` (pure PyTorch, parallel scan ``pscan``), zero initial state
          transformers  ``MambaForCausalLM`` built locally, without ``mamba_ssm`` (its sequential CPU path)
          floor         (GPT-2 only) the step with the model body removed: embedding -> final RMSNorm -> tied
                        head. Its cost is the vocabulary projection every implementation also pays.
eval    one sequence of L tokens (L = 1024, 4096, 32768), forward only, each length in a FRESH subprocess so
        the peak RSS (``ru_maxrss``) is that length's: longssm runs it in chunks with the state carried under
        ``torch.no_grad``; the peers run it in one full-sequence forward (they cannot carry an SSM state
        across calls), at the lengths they reach within ``--peer-mem-cap-mb`` / ``--peer-time-cap``.
scan    forward + backward of the Mamba-1 selective scan alone (B=8, e=512, n=16, L=1024): longssm's fast
        scan, the time-major sequential loop (``selective_scan_ref``), and mambapy's ``pscan`` (with the
        same discretisation and output contraction around it), each with its max relative error (output
        and every input gradient) against a float64 run of the sequential loop.

Every figure: warmup, then the median of ``--repeats`` timed runs (see ``common.measure``). A peer that is
not installed is reported as null with a "missing" note.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the HF model is built from a local config; never download
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

VOCABS = {"byte": 256, "gpt2": 50257}
PEERS = ("mambapy", "transformers")
SECTIONS = ("train", "eval", "scan")

FULL = {
    "model": {"d_model": 256, "n_layers": 4, "d_state": 16, "expand": 2, "d_conv": 4},
    "train": [(16, 64), (256, 8)],  # (T, B)
    "eval_lengths": [1024, 4096, 32768],
    "eval_chunk": 1024,
    "scan": {"b": 8, "e": 512, "n": 16, "l": 1024},
    "min_seconds": 1.0,
}
SMOKE = {
    "model": {"d_model": 32, "n_layers": 1, "d_state": 4, "expand": 2, "d_conv": 4},
    "train": [(16, 4), (32, 2)],
    "eval_lengths": [64, 128, 256],
    "eval_chunk": 64,
    "scan": {"b": 2, "e": 32, "n": 4, "l": 64},
    "min_seconds": 0.0,
}


# ----------------------------------------------------------------------------------------------------------
# The models. Each builder returns (module, forward) with forward(tokens (b, l), state) -> (logits, state);
# peers ignore and return state None (they always start from zeros).


def build_longssm(vocab: int, dims: dict[str, int]):
    from longssm.config import ModelConfig
    from longssm.models import build_model

    model = build_model(ModelConfig(family="mamba", vocab_size=vocab, **dims))

    def forward(tokens: Tensor, state):
        return model(tokens, state)

    return model, forward


class _MambapyLM(nn.Module):
    """mambapy's ``lm.LM`` layout (embedding -> ``mambapy.mamba.Mamba`` -> RMSNorm -> head), for installs where
    ``mambapy.lm`` cannot be imported (it imports ``mambapy.mamba2``, which needs ``einops``)."""

    def __init__(self, config, vocab: int) -> None:
        super().__init__()
        from mambapy.mamba import Mamba, RMSNorm

        self.embedding = nn.Embedding(vocab, config.d_model)
        self.mamba = Mamba(config)
        self.norm_f = RMSNorm(config.d_model, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.d_model, vocab, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.lm_head(self.norm_f(self.mamba(self.embedding(tokens))))


MAMBAPY_NOTES: list[str] = []


def build_mambapy(vocab: int, dims: dict[str, int]):
    from mambapy.mamba import MambaConfig

    config = MambaConfig(
        d_model=dims["d_model"], n_layers=dims["n_layers"], d_state=dims["d_state"],
        expand_factor=dims["expand"], d_conv=dims["d_conv"], pscan=True,
    )
    try:
        from mambapy.lm import LM

        model = LM(config, vocab_size=vocab)
    except ImportError as exc:
        model = _MambapyLM(config, vocab)
        note = f"mambapy.lm not importable ({exc}): its LM layout rebuilt around mambapy.mamba.Mamba"
        if note not in MAMBAPY_NOTES:
            MAMBAPY_NOTES.append(note)
    model.lm_head.weight = model.embedding.weight  # mambapy unties by default; tie as in the other models

    def forward(tokens: Tensor, state):
        return model(tokens), None

    return model, forward


def build_transformers(vocab: int, dims: dict[str, int]):
    from transformers import MambaConfig, MambaForCausalLM

    config = MambaConfig(
        vocab_size=vocab, hidden_size=dims["d_model"], num_hidden_layers=dims["n_layers"],
        state_size=dims["d_state"], expand=dims["expand"], conv_kernel=dims["d_conv"],
        use_cache=False, use_mambapy=False, tie_word_embeddings=True,
    )
    model = MambaForCausalLM(config)

    def forward(tokens: Tensor, state):
        return model(input_ids=tokens, use_cache=False).logits, None

    return model, forward


class Floor(nn.Module):
    """The model with its body removed: tokens (b, l) -> embedding -> RMSNorm -> tied head -> logits (b, l, V)."""

    def __init__(self, vocab: int, d_model: int) -> None:
        super().__init__()
        from longssm.models.mamba import RMSNorm

        self.embeddings = nn.Embedding(vocab, d_model)
        self.norm_f = RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        self.lm_head.weight = self.embeddings.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.lm_head(self.norm_f(self.embeddings(tokens)))


def build_floor(vocab: int, dims: dict[str, int]):
    model = Floor(vocab, dims["d_model"])

    def forward(tokens: Tensor, state):
        return model(tokens), None

    return model, forward


BUILDERS = {"longssm": build_longssm, "mambapy": build_mambapy, "transformers": build_transformers,
            "floor": build_floor}


def build(impl: str, vocab: int, dims: dict[str, int]):
    """(model, forward) or raises ImportError when the peer is not installed."""
    return BUILDERS[impl](vocab, dims)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ----------------------------------------------------------------------------------------------------------
# Training throughput.


def train_rate(impl: str, vocab: int, dims: dict[str, int], T: int, B: int, args, plan) -> dict[str, Any]:
    """tokens/s of (forward + cross-entropy + backward + AdamW step) on random tokens, B·T tokens per step."""
    torch.manual_seed(0)
    model, forward = build(impl, vocab, dims)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(vocab, (B, T + 1), generator=generator) for _ in range(4)]
    carry: dict[str, Any] = {"i": 0, "state": None}

    def step() -> None:
        tokens = batches[carry["i"] % len(batches)]
        carry["i"] += 1
        logits, state = forward(tokens[:, :-1], carry["state"])
        if state is not None:  # stateful TBPTT: the next window starts from this one's detached final state
            carry["state"] = {k: v.detach() for k, v in state.items()}
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    m = common.measure(step, B * T, args.repeats, args.warmup, plan["min_seconds"], args.time_cap)
    result = {"tokens_per_s": m["rate"], "ms_per_step": m["ms_per_call"], "repeats": m["repeats"],
              "steps_per_run": m["calls_per_run"], "params": n_params(model)}
    del model, optimizer, batches, carry
    gc.collect()
    return result


def bench_train(args, plan, notes: list[str]) -> tuple[dict, dict]:
    """({vocab: {"T16": {impl: tokens/s | None}}}, details with step times, repeats and parameter counts)."""
    figures: dict[str, dict] = {}
    details: dict[str, dict] = {}
    missing: set[str] = set()
    for vocab_name, vocab in VOCABS.items():
        impls = ["longssm", *PEERS] + (["floor"] if vocab_name == "gpt2" else [])
        for T, B in plan["train"]:
            key = f"T{T}"
            figures.setdefault(vocab_name, {})[key] = {}
            details.setdefault(vocab_name, {})[key] = {"batch_size": B}
            for impl in impls:
                try:
                    r = train_rate(impl, vocab, plan["model"], T, B, args, plan)
                except ImportError as exc:
                    missing.add(f"{impl} missing ({exc})")
                    figures[vocab_name][key][impl] = None
                    details[vocab_name][key][impl] = f"missing: {exc}"
                    continue
                figures[vocab_name][key][impl] = r["tokens_per_s"]
                details[vocab_name][key][impl] = r
                _progress(f"train {vocab_name} T={T} B={B} {impl}: {r['tokens_per_s']:.0f} tok/s")
    notes.extend(sorted(missing))
    return figures, details


# ----------------------------------------------------------------------------------------------------------
# Evaluation: one length per fresh subprocess.


def eval_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: forward one sequence of spec["L"] tokens; return tokens/s and peak RSS (MB).

    longssm: chunks of spec["chunk"] tokens with the state carried (torch.no_grad). Peers: one forward over
    the whole sequence. Both sum the next-token NLL so the work is that of a perplexity evaluation.
    """
    common.set_threads(spec["threads"])
    impl, L, vocab = spec["impl"], spec["L"], spec["vocab"]
    torch.manual_seed(0)
    model, forward = build(impl, vocab, spec["model"])
    model.eval()
    tokens = torch.randint(vocab, (1, L + 1), generator=torch.Generator().manual_seed(2))
    chunk = spec["chunk"] if impl == "longssm" else L

    def run_sequence() -> float:
        state, nll = None, 0.0
        for s in range(0, L, chunk):
            logits, state = forward(tokens[:, s:min(s + chunk, L)], state)
            targets = tokens[:, s + 1:min(s + chunk, L) + 1]
            nll += F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1), reduction="sum").item()
        return nll

    with torch.no_grad():
        forward(tokens[:, :min(L, spec["chunk"])], None)  # warmup at the chunk size, not the full length
        rss_setup = common.peak_rss_mb()
        m = common.measure(run_sequence, L, spec["repeats"], 0, 0.0, spec["time_cap"])
    return {
        "tokens_per_s": m["rate"],
        "peak_rss_mb": common.peak_rss_mb(),
        "rss_after_setup_mb": rss_setup,
        "seconds_per_sequence": m["ms_per_call"] / 1000,
        "repeats": m["repeats"],
        "chunk": chunk,
    }


def run_eval_child(impl: str, L: int, args, plan, timeout: float) -> dict[str, Any] | str:
    spec = {"impl": impl, "L": L, "vocab": VOCABS[args.eval_vocab], "model": plan["model"],
            "chunk": plan["eval_chunk"], "repeats": args.repeats, "time_cap": args.time_cap,
            "threads": args.threads}
    return common.run_child([sys.executable, __file__, "--eval-child", json.dumps(spec)], timeout=timeout)


def bench_eval(args, plan, notes: list[str]) -> tuple[dict, dict]:
    """longssm at every length; each peer at increasing lengths until the projected cost exceeds a cap.

    Each implementation's lengths run one after another (a peer's next length is projected from its last);
    with ``--jobs`` > 1 the implementations run side by side (peak RSS stays per process; timings get noisier).
    """
    import importlib.util
    from concurrent.futures import ThreadPoolExecutor

    impls = ["longssm"]
    peers: dict[str, Any] = {}
    for impl, module in (("mambapy", "mambapy"), ("transformers", "transformers")):
        if importlib.util.find_spec(module) is None:
            notes.append(f"{impl} missing (no module named {module!r}): no eval figures")
            peers[impl] = None
        else:
            impls.append(impl)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        chains = dict(zip(impls, pool.map(lambda impl: _eval_chain(impl, args, plan), impls)))
    ours = {key: (r if isinstance(r, dict) else {"tokens_per_s": None, "peak_rss_mb": None, "error": r})
            for key, r in chains.pop("longssm").items()}
    peers.update(chains)
    return ours, peers


def _eval_chain(impl: str, args, plan) -> dict[str, Any]:
    """{"L<n>": child result | "skipped: reason"} for one implementation, shortest length first."""
    timeout = 3 * args.time_cap + 120
    out: dict[str, Any] = {}
    last: tuple[int, dict] | None = None
    for L in plan["eval_lengths"]:
        reason = None if impl == "longssm" else _peer_projection(last, L, args)
        if reason is None:
            r = run_eval_child(impl, L, args, plan, timeout)
            if isinstance(r, dict):
                last = (L, r)
        else:
            r = f"skipped: {reason}"
        out[f"L{L}"] = r
        _progress(f"eval {impl} L={L}: {r}")
    return out


def _peer_projection(last: tuple[int, dict] | None, L: int, args) -> str | None:
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


# ----------------------------------------------------------------------------------------------------------
# Scan only.


def _pscan_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """mambapy's scan with the discretisation and output contraction of ``mambapy.mamba.MambaBlock``:
    u, delta (b, l, e); A (e, n); B, C (b, l, n) -> y (b, l, e)."""
    from mambapy.pscan import pscan

    deltaA = torch.exp(delta.unsqueeze(-1) * A)  # (b, l, e, n)
    BX = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # (b, l, e, n)
    hs = pscan(deltaA, BX)
    return (hs @ C.unsqueeze(-1)).squeeze(-1)


def _scan_inputs(b: int, e: int, n: int, l: int, dtype=torch.float32) -> list[Tensor]:
    """u, Δ (b, l, e); A (e, n); B, C (b, l, n), with Δ = softplus(·) in the Mamba init range ~[1e-3, 1e-1]."""
    g = torch.Generator().manual_seed(3)
    u = torch.randn(b, l, e, generator=g)
    delta = F.softplus(torch.randn(b, l, e, generator=g) - 4.0)
    A = -torch.arange(1, n + 1, dtype=torch.float32).expand(e, n).contiguous()
    A = A * torch.exp(0.1 * torch.randn(e, n, generator=g))
    B = torch.randn(b, l, n, generator=g)
    C = torch.randn(b, l, n, generator=g)
    return [x.to(dtype) for x in (u, delta, A, B, C)]


def _fwd_bwd(fn, inputs: list[Tensor], dy: Tensor) -> list[Tensor]:
    """[y, du, dΔ, dA, dB, dC] of y = fn(u, Δ, A, B, C) with dL/dy = dy."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach()] + [x.grad for x in leaves]


def _reference64(inputs: list[Tensor], dy: Tensor) -> list[Tensor]:
    """float64 sequential scan, one batch row at a time (rows are independent; dA sums over them)."""
    from longssm.ops.selective_scan import selective_scan_ref

    u, delta, A, B, C = (x.double() for x in inputs)
    outs: list[list[Tensor]] = []
    for i in range(u.shape[0]):
        row = [u[i:i + 1], delta[i:i + 1], A, B[i:i + 1], C[i:i + 1]]
        outs.append(_fwd_bwd(lambda *x: selective_scan_ref(*x)[0], row, dy[i:i + 1].double()))
    y, du, ddelta, _, dB, dC = (torch.cat([o[k] for o in outs]) for k in (0, 1, 2, 3, 4, 5))
    dA = sum(o[3] for o in outs)
    return [y, du, ddelta, dA, dB, dC]


def _rel_errors(got: list[Tensor], ref: list[Tensor]) -> dict[str, float]:
    """Per tensor: max |got - ref| / max |ref| (max-norm relative error)."""
    names = ("y", "du", "ddelta", "dA", "dB", "dC")
    return {k: ((g.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
            for k, g, r in zip(names, got, ref)}


def bench_scan(args, plan, notes: list[str]) -> tuple[dict, dict]:
    from longssm.ops.selective_scan import selective_scan_fast, selective_scan_ref

    s = plan["scan"]
    inputs = _scan_inputs(s["b"], s["e"], s["n"], s["l"])
    dy = torch.randn(s["b"], s["l"], s["e"], generator=torch.Generator().manual_seed(4))
    impls: dict[str, Any] = {
        "fast": lambda *x: selective_scan_fast(*x)[0],
        "sequential": lambda *x: selective_scan_ref(*x)[0],
    }
    try:
        import mambapy.pscan  # noqa: F401

        impls["mambapy_pscan"] = _pscan_scan
    except ImportError as exc:
        notes.append(f"mambapy missing ({exc}): no pscan figure")
        impls["mambapy_pscan"] = None
    ref = _reference64(inputs, dy)
    figures: dict[str, Any] = {}
    details: dict[str, Any] = {"shape": dict(s), "tokens_per_call": s["b"] * s["l"]}
    for name, fn in impls.items():
        if fn is None:
            figures[f"{name}_ms"] = None
            details[name] = "missing"
            continue
        errors = _rel_errors(_fwd_bwd(fn, inputs, dy), ref)
        m = common.measure(lambda: _fwd_bwd(fn, inputs, dy), s["b"] * s["l"], args.repeats, args.warmup,
                           plan["min_seconds"], args.time_cap)
        figures[f"{name}_ms"] = m["ms_per_call"]
        details[name] = {"ms": m["ms_per_call"], "tokens_per_s": m["rate"], "repeats": m["repeats"],
                         "max_rel_err": max(errors.values()), "rel_err": errors}
        _progress(f"scan {name}: {m['ms_per_call']:.1f} ms, max rel err {max(errors.values()):.2e}")
    figures["max_rel_err"] = details["fast"]["max_rel_err"]
    figures["max_rel_err_by_impl"] = {k: (v["max_rel_err"] if isinstance(v, dict) else None)
                                      for k, v in details.items() if k in impls}
    return figures, details


# ----------------------------------------------------------------------------------------------------------
# Ratios and targets.


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def _all(values: list[bool | None]) -> bool | None:
    """True/False when every input is known; None when some figure is missing."""
    return None if not values or any(v is None for v in values) else all(values)


def _at_least(value: float | None, threshold: float) -> bool | None:
    return None if value is None else value >= threshold


def ratios_and_targets(result: dict[str, Any]) -> tuple[dict, dict]:
    ratios: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    train = result.get("train_tokens_per_s")
    if train:
        ratios["train"] = {}
        for vocab, per_T in train.items():
            ratios["train"][vocab] = {}
            for key, fig in per_T.items():
                r = {f"longssm/{peer}": _ratio(fig.get("longssm"), fig.get(peer)) for peer in fig if peer != "longssm"}
                ratios["train"][vocab][key] = r
        byte = ratios["train"].get("byte", {})
        targets["byte_longssm_ge_3x_mambapy"] = _all([_at_least(r.get("longssm/mambapy"), 3) for r in byte.values()])
        targets["byte_longssm_ge_5x_transformers"] = _all(
            [_at_least(r.get("longssm/transformers"), 5) for r in byte.values()])
        gpt2 = ratios["train"].get("gpt2", {})
        targets["gpt2_longssm_ge_75pct_floor"] = _all([_at_least(r.get("longssm/floor"), 0.75) for r in gpt2.values()])
    scan = result.get("scan")
    if scan:
        ratios["scan"] = {
            "fast_speedup_vs_pscan": _ratio(scan.get("mambapy_pscan_ms"), scan.get("fast_ms")),
            "fast_speedup_vs_sequential": _ratio(scan.get("sequential_ms"), scan.get("fast_ms")),
        }
        targets["scan_fast_ge_4x_pscan"] = _at_least(ratios["scan"]["fast_speedup_vs_pscan"], 4)
        targets["scan_fast_ge_4x_sequential"] = _at_least(ratios["scan"]["fast_speedup_vs_sequential"], 4)
        err = scan.get("max_rel_err")
        targets["scan_max_rel_err_le_1e-5"] = None if err is None else err <= 1e-5
    ev = result.get("eval")
    if ev:
        keys = sorted(ev, key=lambda k: int(k[1:]))
        first, last = ev[keys[0]], ev[keys[-1]]
        rss = _ratio(last.get("peak_rss_mb"), first.get("peak_rss_mb"))
        tps = _ratio(last.get("tokens_per_s"), first.get("tokens_per_s"))
        ratios["eval"] = {f"peak_rss_{keys[-1]}/{keys[0]}": rss, f"tokens_per_s_{keys[-1]}/{keys[0]}": tps}
        targets["eval_peak_rss_longest_le_1.1x_shortest"] = None if rss is None else rss <= 1.1
        targets["eval_tokens_per_s_longest_within_10pct_of_shortest"] = None if tps is None else abs(tps - 1) <= 0.1
    return ratios, targets


# ----------------------------------------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"[peers] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", type=Path, help="also write the JSON object to this file")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repeat: checks that everything runs (< 60 s)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure; the median is reported (5)")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated subset of train,eval,scan")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads, in this process and every child (2; 1 with --smoke)")
    p.add_argument("--time-cap", type=float, default=120.0,
                   help="seconds one figure may take; slow calls get fewer repeats (120)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls before each figure's calibration call (2; 0 with --smoke)")
    p.add_argument("--eval-vocab", choices=sorted(VOCABS), default="byte", help="vocabulary of the eval model (byte)")
    p.add_argument("--peer-mem-cap-mb", type=float, default=4096.0,
                   help="peers skip an eval length whose projected peak RSS exceeds this (4096)")
    p.add_argument("--peer-time-cap", type=float, default=120.0,
                   help="peers skip an eval length whose projected seconds per sequence exceed this (120)")
    p.add_argument("--jobs", type=int, default=None,
                   help="eval implementations measured side by side (1: one process at a time; 3 with --smoke)")
    p.add_argument("--eval-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 5
    if args.threads is None:
        args.threads = 1 if args.smoke else 2
    if args.warmup is None:
        args.warmup = 0 if args.smoke else 2
    if args.jobs is None:
        args.jobs = 3 if args.smoke else 1
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        p.error(f"--only takes {','.join(SECTIONS)}; got {','.join(sorted(unknown))}")
    if args.smoke:
        args.time_cap = min(args.time_cap, 20.0)
        args.peer_time_cap = min(args.peer_time_cap, 20.0)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.eval_child:
        print(json.dumps(eval_child(json.loads(args.eval_child))))
        return {}
    common.set_threads(args.threads)
    plan = SMOKE if args.smoke else FULL
    started = time.perf_counter()
    notes = [
        "train: one step = forward + cross-entropy + backward + AdamW step (lr 1e-4), identical for every "
        "implementation, on random tokens; tokens/s counts B*T input tokens per step",
        "train: longssm carries the detached final state of the previous step (stateful TBPTT); mambapy and "
        "transformers start every step from zeros (they take no initial state)",
        "train: mambapy's LM head is tied to its embedding here (it unties by default) so all models have the "
        "same parameters; transformers MambaForCausalLM runs without mamba_ssm (use_mambapy=False: its "
        "sequential CPU loop)",
        "train: floor = embedding -> RMSNorm -> tied head, the same step without the model body (gpt2 only)",
        f"eval: vocabulary {args.eval_vocab}, batch 1, forward + NLL under torch.no_grad, one fresh subprocess per "
        f"(implementation, length); longssm in chunks of {plan['eval_chunk']} tokens with the state carried, peers "
        "in one full-sequence forward; peak_rss_mb = peak RSS (VmHWM) of that subprocess, torch itself included",
        "scan: forward + backward of y = scan(u, delta, A, B, C) (no D, no gate), dL/dy random; "
        "max_rel_err = max over y and the five input gradients of max|x - ref| / max|ref|, ref = float64 "
        "sequential scan",
        "figures: warmup, then the median of the timed runs; see details.*.repeats for the repeats used",
    ]
    result: dict[str, Any] = {
        "machine": common.machine_info(args.threads),
        "date": common.now_iso(),
        "config": {"smoke": args.smoke, "model": {"family": "mamba", **plan["model"], "dtype": "float32"},
                   "warmup": args.warmup, "time_cap": args.time_cap, "train_TB": plan["train"],
                   "eval_lengths": plan["eval_lengths"], "eval_chunk": plan["eval_chunk"], "scan": plan["scan"],
                   "repeats": args.repeats, "threads": args.threads},
    }
    details: dict[str, Any] = {}
    if "train" in args.only:
        result["train_tokens_per_s"], details["train"] = bench_train(args, plan, notes)
    if "eval" in args.only:
        result["eval"], result["eval_peers"] = bench_eval(args, plan, notes)
    if "scan" in args.only:
        result["scan"], details["scan"] = bench_scan(args, plan, notes)
    result["ratios"], result["targets"] = ratios_and_targets(result)
    result["notes"] = notes + MAMBAPY_NOTES
    result["details"] = details
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
