"""``longssm eval`` / ``longssm compare``: load a run, tokenize the data with the run's tokenizer, compute the
requested metrics (each cached per checkpoint hash, data hash, metric and length), write JSON / markdown / plots.

Result JSON: one top-level key per metric, named as in ``--metrics``, plus "name", "family", "scheme",
"train_seq_len", "run", "checkpoint", "data", "settings", "length_extension" (when ppl_vs_length is present):

    ppl_vs_length          {"16": ppl, "32": ppl, ...}
    position_ppl           {"length", "n_sequences", "ppl", "bins": [{"lo", "hi", "loss", "ppl"}], "curve": [...]}
    effective_remembrance  {"T", "n_sequences", "t": [...], "effrem": [...], "per_sequence_std", "tokens_fed"}
    passkey                {"lengths", "depths", "accuracy": {L: {depth: acc}}, "ranked_accuracy": ..., ...}
    state_stats            {"positions": [...], "keys": {"layers.0.ssm": {"norm", "mean_abs", "max_abs"}}, ...}
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import is_complete, load_model
from ..data.corpus import load_corpus
from ..data.tokenizer import load_tokenizer
from ..errors import UserError
from ..train import resolve_device
from .cache import EvalCache, file_hash
from .passkey import DEFAULT_DEPTHS, default_passkey_lengths, min_prompt_length, passkey_grid
from .perplexity import (DEFAULT_LENGTHS, EVAL_STATES, ORDERS, default_tokens_per_forward, eval_token_count,
                         SEQUENCES_PER_STREAM,
                         length_curve, make_sequences, position_summary, sequence_losses)
from .plots import markdown_report, plot_all
from .remembrance import effective_remembrance, effrem_grid
from .state_stats import StateStats
from .sweep import length_extension_verdict

METRICS = ("ppl_vs_length", "position_ppl", "effective_remembrance", "passkey", "state_stats")
DEFAULT_METRICS = ("ppl_vs_length",)
DEFAULT_EFFREM_LENGTH = 2048


def parse_metrics(text: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"ppl_vs_length,passkey"`` (or ``all``) -> the metric names, in the canonical order."""
    if text is None:
        return list(DEFAULT_METRICS)
    names = [x.strip() for x in (text.split(",") if isinstance(text, str) else text) if x.strip()]
    if names == ["all"]:
        return list(METRICS)
    unknown = [x for x in names if x not in METRICS]
    if unknown or not names:
        raise UserError(f"--metrics must be a comma-separated subset of {','.join(METRICS)} (or 'all'); got {text!r}")
    return [m for m in METRICS if m in names]


def default_cache_dir(run: str | Path) -> Path:
    """``<run>/eval_cache`` (a checkpoint directory's cache sits beside it, not inside it)."""
    path = Path(run)
    return (path.parent if is_complete(path) else path) / "eval_cache"


def evaluate_run(
    run: str | Path,
    data: str | None = None,
    lengths: list[int] | None = None,
    max_tokens: int | None = None,
    chunk: int = 1024,
    tokens_per_forward: int | None = None,
    device: str = "auto",
    progress: bool = True,
    metrics: str | list[str] | None = None,
    eval_state: str = "zero",
    order: str = "consecutive",
    seed: int = 0,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    position_length: int | None = None,
    effrem_length: int | None = None,
    effrem_sequences: int = 8,
    passkey_lengths: list[int] | None = None,
    passkey_depths: list[float] | None = None,
    passkey_trials: int = 4,
    passkey_digits: int = 5,
) -> dict[str, Any]:
    """Evaluate the run (or checkpoint) ``run`` on ``data`` (default: its validation file). See the module docstring.

    ``lengths`` default: 16, 32, ..., 32768, cut to what the data (and ``max_tokens``) holds; explicit lengths
    longer than the data are an error. ``tokens_per_forward`` default: from the vocabulary size.
    """
    from tqdm.auto import tqdm

    metrics = parse_metrics(metrics)
    if eval_state not in EVAL_STATES:
        raise UserError(f"--state must be one of {', '.join(EVAL_STATES)}; got {eval_state!r}")
    if order not in ORDERS:
        raise UserError(f"--order must be one of {', '.join(ORDERS)}; got {order!r}")
    if chunk < 1:
        raise UserError(f"--chunk must be >= 1; got {chunk}")
    dev = resolve_device(device)
    model, cfg, ckpt = load_model(run, device=dev)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise UserError(f"checkpoint {ckpt} has a vocabulary of {cfg.model.vocab_size} but its tokenizer "
                        f"{cfg.data.tokenizer!r} has {tokenizer.vocab_size} tokens: they do not match")
    corpus = load_corpus(data or cfg.data.valid, tokenizer, cfg.data.cache_dir, progress=progress)
    tokens = corpus.tokens
    if len(tokens) < 2:
        raise UserError(f"data file {corpus.source} holds {len(tokens)} token(s): nothing to evaluate")
    budget = len(tokens) - 1 if max_tokens is None else min(len(tokens) - 1, max_tokens)
    if lengths is None:
        lengths = [x for x in DEFAULT_LENGTHS if x <= budget] or [budget]
    tpf = tokens_per_forward or default_tokens_per_forward(cfg.model.vocab_size)
    n_targets = eval_token_count(len(tokens), lengths, max_tokens)

    if "passkey" in metrics:  # fail before any computation
        shortest = min_prompt_length(tokenizer, passkey_digits)
        pk_lengths = sorted(set(passkey_lengths)) if passkey_lengths else default_passkey_lengths(lengths, shortest)
        if pk_lengths[0] < shortest:
            raise UserError(f"passkey lengths {[x for x in pk_lengths if x < shortest]} are shorter than the prompt's "
                            f"fixed part ({shortest} tokens with this tokenizer); use --passkey-lengths >= {shortest}")
        depths = passkey_depths if passkey_depths is not None else DEFAULT_DEPTHS
        if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
            raise UserError(f"--passkey-depths must lie in [0, 1]; got {depths}")
    if "effective_remembrance" in metrics:
        Te = effrem_length or min(max(lengths), DEFAULT_EFFREM_LENGTH)
        if Te > len(tokens):
            raise UserError(f"--effrem-length {Te} is longer than the data ({len(tokens)} tokens)")
    if position_length is not None and ("position_ppl" in metrics or "state_stats" in metrics):
        eval_token_count(len(tokens), [position_length], max_tokens)

    cache = EvalCache(None if not use_cache else (cache_dir or default_cache_dir(run)),
                      file_hash(ckpt / "model.safetensors"), corpus.digest)
    T = cfg.train.seq_len
    result: dict[str, Any] = {
        "run": str(run),
        "name": cfg.name,
        "checkpoint": str(ckpt),
        "family": cfg.model.family,
        "scheme": cfg.state.scheme,
        "train_seq_len": T,
        "data": corpus.source,
        "data_digest": corpus.digest,
        "model_hash": cache.model_hash,
        "metrics": metrics,
    }
    settings: dict[str, Any] = {"n_targets": n_targets, "lengths": lengths, "eval_state": eval_state, "order": order,
                                "seed": seed, "chunk": chunk, "tokens_per_forward": tpf, "device": str(dev)}
    t_start = time.perf_counter()

    def bar(total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="tok", disable=not progress, leave=False, dynamic_ncols=True)

    # Position-wise loss and state statistics: one zero-state pass over sequences of length Lp.
    Lp = position_length or max(lengths)
    position = None
    if "position_ppl" in metrics or "state_stats" in metrics:
        n_pos = (n_targets // Lp) * Lp if Lp <= n_targets else eval_token_count(len(tokens), [Lp], max_tokens)
        settings.update(position_length=Lp, position_targets=n_pos)
        pos_key, stats_key = {"n_targets": n_pos}, {"n_targets": n_pos}
        pass_out: dict[str, Any] = {}

        def long_pass() -> dict[str, Any]:
            if not pass_out:
                seqs = make_sequences(tokens, Lp, n_pos)
                stats = StateStats(Lp)
                with bar(n_pos, f"position loss + state L={Lp}") as b:
                    nll, _ = sequence_losses(model, seqs, chunk, tpf, device=dev, progress=b, cuts=stats.positions,
                                             on_segment=stats)
                pass_out["position_ppl"] = position_summary(nll.mean(0).numpy(), seqs.shape[0])
                pass_out["state_stats"] = stats.result(T)
            return pass_out

        if "position_ppl" in metrics:
            position = cache.get_or_compute("position_ppl", Lp, pos_key, lambda: long_pass()["position_ppl"])
            result["position_ppl"] = position
        if "state_stats" in metrics:
            result["state_stats"] = cache.get_or_compute("state_stats", Lp, stats_key, lambda: long_pass()["state_stats"])

    if "ppl_vs_length" in metrics:
        ppl: dict[str, float] = {}
        key = {"n_targets": n_targets, "eval_state": eval_state, "order": order if eval_state == "previous" else None,
               "seed": seed if order == "shuffled" and eval_state == "previous" else None,
               "per_stream": SEQUENCES_PER_STREAM if eval_state == "previous" else None}
        todo = [L for L in lengths if cache.directory is None or not cache.path("ppl_vs_length", L, key).is_file()]
        with bar(n_targets * len(todo), "ppl vs length") as b:
            for L in lengths:
                def compute(L=L) -> dict[str, float]:
                    if (position is not None and L == Lp and eval_state == "zero"
                            and settings.get("position_targets") == n_targets):
                        return {"ppl": position["ppl"], "loss": math.log(position["ppl"])}
                    curve = length_curve(model, tokens, L, n_targets, eval_state, order, seed, chunk=chunk,
                                         tokens_per_forward=tpf, device=dev, progress=b)
                    loss = float(curve.mean())
                    return {"ppl": math.exp(loss), "loss": loss}
                ppl[str(L)] = cache.get_or_compute("ppl_vs_length", L, key, compute)["ppl"]
        result["ppl_vs_length"] = ppl
        result["length_extension"] = length_extension_verdict(ppl, T)

    if "effective_remembrance" in metrics:
        n_e = min(effrem_sequences, len(tokens) // Te)
        settings.update(effrem_length=Te, effrem_sequences=n_e)
        with bar(n_e * sum(Te - t for t in effrem_grid(Te)), f"effective remembrance T={Te}") as b:
            result["effective_remembrance"] = cache.get_or_compute(
                "effective_remembrance", Te, {"n_sequences": effrem_sequences, "grid": effrem_grid(Te)},
                lambda: effective_remembrance(model, tokens, Te, effrem_sequences, chunk=chunk, tokens_per_forward=tpf,
                                              device=dev, progress=b))

    if "passkey" in metrics:
        settings.update(passkey_lengths=pk_lengths, passkey_depths=depths, passkey_trials=passkey_trials)
        pk_key = {"depths": depths, "trials": passkey_trials, "digits": passkey_digits, "seed": seed,
                  "tokenizer": tokenizer.identity}
        with bar(passkey_trials * len(depths) * sum(pk_lengths), "passkey") as b:
            result["passkey"] = passkey_grid(
                model, tokenizer, pk_lengths, depths, passkey_trials, passkey_digits, seed=seed, chunk=chunk,
                tokens_per_forward=tpf, device=dev, progress=b,
                cached=lambda L, compute: cache.get_or_compute("passkey", L, pk_key, compute))

    result["settings"] = settings
    result["cache"] = {"dir": str(cache.directory) if cache.directory else None, "hits": cache.hits, "misses": cache.misses}
    result["seconds"] = round(time.perf_counter() - t_start, 2)
    return result


def write_outputs(result: dict[str, Any], json_path: str | Path | None, plots_dir: str | Path | None = None) -> str:
    """Write ``json_path`` and a markdown report beside it (``.md``), and the plots into ``plots_dir``.
    Returns the markdown report."""
    report = markdown_report([result])
    if plots_dir:
        result["plots"] = [str(p) for p in plot_all([result], plots_dir, heatmap=False)]
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        path.with_suffix(".md").write_text(report + "\n")
    return report


def load_result(path: str | Path) -> dict[str, Any]:
    """Read an eval result JSON; one-line errors for files that are not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such result file: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not any(m in data for m in METRICS):
        raise UserError(f"{path} is not a longssm eval result (none of the keys {', '.join(METRICS)})")
    return data


def compare(results: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Any]:
    """Overlay several eval results: every plot they have data for, the sweep heatmap, ``compare.md`` and
    ``compare.json`` (verdicts and perplexities per run) in ``out_dir``."""
    from .plots import run_label

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_all(results, out, heatmap=len(results) >= 2)
    report = markdown_report(results)
    (out / "compare.md").write_text(report + "\n")
    summary = {
        "runs": [{"label": run_label(r), "name": r.get("name"), "family": r.get("family"), "scheme": r.get("scheme"),
                  "train_seq_len": r.get("train_seq_len"), "ppl_vs_length": r.get("ppl_vs_length"),
                  "length_extension": length_extension_verdict(r["ppl_vs_length"], r.get("train_seq_len"))
                  if r.get("ppl_vs_length") else None} for r in results],
        "plots": [str(p) for p in plots],
    }
    (out / "compare.json").write_text(json.dumps(summary, indent=2))
    return {"report": report, "plots": plots, "files": [out / "compare.md", out / "compare.json"]}
