"""``longssm eval`` / ``longssm compare``.

``evaluate_run`` loads a run, tokenizes the data with the run's tokenizer, checks what needs the data, then runs
every metric of ``EvalConfig.metrics`` (registered in ``registry.py``) on one shared ``EvalContext``; each metric
caches its numbers per checkpoint hash, data hash, metric, length and settings (``cache.py``). ``write_outputs``,
``load_result`` and ``compare`` write and read the results (JSON, markdown from ``report.py``, ``plots.py``).

Several processes (``torchrun --nproc-per-node W -m longssm eval RUN ...``): ``evaluate_run`` joins torchrun's
process group (``distributed.init``; gloo on the CPU, NCCL with each process on ``cuda:LOCAL_RANK``).
ppl_vs_length, position_ppl, state_stats and effective_remembrance split their sequences over the W processes and
sum what they measure (the same numbers as one process, up to float rounding); passkey runs whole in every
process. Cache hits are decided by all processes together and written by rank 0, which alone shows progress bars;
every process returns the whole result, and only rank 0 should write it (``write_outputs``).

Result JSON: one top-level key per metric, named as in ``--metrics``, plus "run", "name", "checkpoint", "family",
"scheme", "train_seq_len", "data", "data_digest", "model_hash", "metrics", "settings", "cache", "seconds", and
"length_extension" (the verdict of ``report.py``) when ppl_vs_length is present:

    ppl_vs_length          {"16": ppl, "32": ppl, ...}
    position_ppl           {"length", "n_sequences", "ppl", "bins": [{"lo", "hi", "loss", "ppl"}], "curve": [...]}
    effective_remembrance  {"T", "n_sequences", "t": [...], "effrem": [...], "per_sequence_std", "tokens_fed"}
    passkey                {"lengths", "depths", "accuracy": {L: {depth: acc}}, "ranked_accuracy": ..., ...}
    state_stats            {"positions": [...], "keys": {"layers.0.ssm": {"norm", "mean_abs", "max_abs"}}, ...}
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import is_complete, load_model
from ..config import DEFAULT_LENGTHS, EvalConfig, to_dict
from ..data.corpus import load_corpus
from ..data.tokenizer import load_tokenizer, vocabulary_mismatch
from ..errors import UserError
from ..outputs import check_directory, check_file, staged_outputs, write_texts
from ..paths import user_cache_dir
from ..runtime import distributed
from ..runtime.device import resolve_device
from .cache import EvalCache, model_hash
from .context import EvalContext
from .perplexity import default_tokens_per_forward, eval_token_count
from .plots import plot_all
from .registry import get_metric, metric_names, normalise_metrics
from .report import (
    Result,
    length_extension_of,
    length_extension_verdict,
    markdown_report,
    run_label,
    with_unique_labels,
)


def default_cache_dir(run: str | Path) -> Path:
    """The evaluation cache of ``run`` when ``--cache-dir`` is not given: ``<run>/eval_cache`` for a run directory
    or a checkpoint inside one (``final/``, ``checkpoints/step-*``); ``eval_cache`` in the user's cache directory
    (``paths.user_cache_dir``) for a checkpoint directory outside a run or a run that cannot be written (read-only).
    Never the working directory, unless that is the run. Entries are keyed by the model file's hash, so the
    checkpoints sharing the user's cache cannot mix them up."""
    path = Path(run)
    run_dir = _run_of_checkpoint(path) if is_complete(path) else path
    if run_dir is not None:
        cache = run_dir / "eval_cache"
        if os.access(cache if cache.exists() else run_dir, os.W_OK):
            return cache
    return user_cache_dir() / "eval_cache"


def _run_of_checkpoint(ckpt: Path) -> Path | None:
    """The run directory holding checkpoint ``ckpt`` (``<run>/final``, ``<run>/checkpoints/step-*``: a directory
    with the run's ``config.yaml``), else None."""
    run_dir = ckpt.parent if ckpt.name == "final" else ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    return run_dir if run_dir is not None and (run_dir / "config.yaml").is_file() else None


def default_lengths(n_tokens: int, max_tokens: int | None) -> list[int]:
    """``DEFAULT_LENGTHS`` up to the targets the data (and ``max_tokens``) holds, else that number of targets."""
    budget = n_tokens - 1 if max_tokens is None else min(n_tokens - 1, max_tokens)
    return [x for x in DEFAULT_LENGTHS if x <= budget] or [budget]


def evaluate_run(run: str | Path, cfg: EvalConfig, progress: bool = True) -> Result:
    """Evaluate the run (or checkpoint) ``run`` as ``cfg`` says; returns the result JSON of the module docstring.

    ``UserError`` (before any metric runs) for what ``EvalConfig`` cannot check alone: a tokenizer that does not
    match the checkpoint, lengths longer than the data, passkey prompts that do not fit, ...

    Started by torchrun: joins its process group and shares the work with the other processes (see the module
    docstring); ``progress`` applies to rank 0, and ``settings["world_size"]`` records the number of processes.
    """
    cfg = dataclasses.replace(cfg, metrics=normalise_metrics(cfg.metrics))
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    shard, device = distributed.init(resolve_device(cfg.device, "--device"))
    progress = progress and shard.is_main
    model, run_cfg, ckpt = load_model(run, device=device)
    tokenizer = load_tokenizer(run_cfg.data.tokenizer)
    mismatch = vocabulary_mismatch(tokenizer, run_cfg.model.vocab_size)
    if mismatch and tokenizer.vocab_size > run_cfg.model.vocab_size:
        raise UserError(f"checkpoint {ckpt} has a vocabulary of {run_cfg.model.vocab_size} but {mismatch}")
    if mismatch and shard.is_main:
        print(f"warning: checkpoint {ckpt}: {mismatch} (data.tokenizer in its config.yaml)", file=sys.stderr)
    corpus = load_corpus(cfg.data or run_cfg.data.valid, tokenizer, run_cfg.data.cache_dir, progress=progress,
                         role="valid")
    if len(corpus.tokens) < 2:
        raise UserError(f"data file {corpus.source} holds {len(corpus.tokens)} token(s): nothing to evaluate")
    lengths = cfg.lengths or default_lengths(len(corpus.tokens), cfg.max_tokens)
    cache = EvalCache((cfg.cache_dir or default_cache_dir(run)) if cfg.use_cache else None,
                      model_hash(ckpt / "model.safetensors", to_dict(run_cfg.model)), corpus.digest, shard)
    ctx = EvalContext(
        cfg=cfg, model=model, tokenizer=tokenizer, tokens=corpus.tokens, train_seq_len=run_cfg.train.seq_len,
        lengths=lengths, n_targets=eval_token_count(len(corpus.tokens), lengths, cfg.max_tokens),
        tokens_per_forward=cfg.batch_tokens or default_tokens_per_forward(run_cfg.model.vocab_size), device=device,
        cache=cache, progress=progress, shard=shard,
    )
    settings: dict[str, Any] = {"n_targets": ctx.n_targets, "lengths": lengths, "eval_state": cfg.state,
                                "order": cfg.order, "seed": cfg.seed, "chunk": cfg.chunk,
                                "tokens_per_forward": ctx.tokens_per_forward, "device": str(device),
                                "world_size": shard.world}
    metrics = [get_metric(name) for name in cfg.metrics]
    for metric in metrics:  # every data-dependent check before the first computation
        settings.update(metric.settings(ctx))

    result: Result = {
        "run": str(run), "name": run_cfg.name, "checkpoint": str(ckpt), "family": run_cfg.model.family,
        "scheme": run_cfg.state.scheme, "train_seq_len": ctx.train_seq_len, "data": corpus.source,
        "data_digest": corpus.digest, "model_hash": cache.model_hash, "metrics": list(cfg.metrics),
    }
    t_start = time.perf_counter()
    for metric in metrics:
        computed = metric.compute(ctx)
        result[metric.name] = computed.to_json()
        if metric.name == "ppl_vs_length" and computed.blocks is not None:
            result.update(ppl_intervals(computed.blocks, ctx.n_targets, cfg.confidence, cfg.state))
    if "ppl_vs_length" in result:
        result["length_extension"] = length_extension_verdict(result["ppl_vs_length"], ctx.train_seq_len,
                                                              result.get("ppl_blocks"), cfg.confidence)
    result["settings"] = settings
    result["cache"] = {"dir": str(cache.directory) if cache.directory else None, "hits": cache.hits,
                       "misses": cache.misses}
    result["seconds"] = round(time.perf_counter() - t_start, 2)
    return result


def paired_differences(results: list[Result]) -> dict[str, Any]:
    """ppl(B) − ppl(A) per evaluation length for every result B after the first, A (``report.paired_difference``:
    over seeds, else over the evaluation blocks, else the 1e-3 rule): ``{"rows": [{"a", "b", "length", "diff",
    "low", "high", "rule", "resolved"}], "text": a markdown table}``. ``UserError`` when B was evaluated on other
    data, another number of targets or other lengths than A."""
    from .report import paired_difference

    with_ppl = [r for r in results if r.get("ppl_vs_length")]
    if len(with_ppl) < 2:
        return {"rows": [], "text": ""}
    a, rows = with_ppl[0], []
    for b in with_ppl[1:]:
        for key, what in (("data_digest", "data"), ("n_targets", "number of evaluation targets")):
            va, vb = (r.get(key, (r.get("settings") or {}).get(key)) for r in (a, b))
            if va is not None and vb is not None and va != vb:
                raise UserError(f"compare: {run_label(b)} was evaluated on other {what} than {run_label(a)} "
                                f"({vb} vs {va}); paired differences need the same evaluation (same --data, "
                                f"--max-tokens)")
        common = sorted(set(a["ppl_vs_length"]) & set(b["ppl_vs_length"]), key=int)
        if set(a["ppl_vs_length"]) != set(b["ppl_vs_length"]):
            raise UserError(f"compare: {run_label(b)} was evaluated at other lengths than {run_label(a)} "
                            f"({','.join(sorted(b['ppl_vs_length'], key=int))} vs "
                            f"{','.join(sorted(a['ppl_vs_length'], key=int))}); paired differences need the same "
                            f"evaluation (same --lengths)")
        rows += [{"a": run_label(a), "b": run_label(b), "length": int(L)}
                 | paired_difference(a, b, L, L, (a.get("ppl_interval") or {}).get("confidence", 0.95))
                 for L in common]
    lines = [f"Paired differences against {run_label(a)} (ppl of the run − ppl of {run_label(a)}, same text):", "",
             "| run | L | difference | interval | rule | resolved |", "|---|---:|---:|---|---|---|"]
    for r in rows:
        interval = f"[{r['low']:+.3f}, {r['high']:+.3f}]" if r["low"] is not None else ""
        lines.append(f"| {r['b']} | {r['length']} | {r['diff']:+.3f} | {interval} | {r['rule']} | "
                     f"{'yes' if r['resolved'] else 'no'} |")
    return {"rows": rows, "text": "\n".join(lines)}


def ppl_intervals(blocks: dict[int, list[float]], n_targets: int, confidence: float, state: str) -> Result:
    """``{"ppl_interval": {"confidence", "method", "block_tokens", "intervals": {L: {"low", "high", "blocks"}}},
    "ppl_blocks": {"block_tokens", "counts", "sums": {L: [...]}}}``: the bootstrap interval of every ppl(L) over
    the evaluated text and the blocks it resampled (kept so that ``compare`` can pair runs block by block)."""
    from ..stats import BLOCK_TOKENS, Blocks

    kept = Blocks.of(n_targets, blocks)
    intervals = {L: kept.interval(L, confidence) for L in kept.sums}
    method = f"block bootstrap over {BLOCK_TOKENS}-target blocks (percentile), eval state {state}"
    return {"ppl_interval": {"confidence": confidence, "method": method, "block_tokens": BLOCK_TOKENS,
                             "intervals": intervals},
            "ppl_blocks": kept.to_json()}


def write_outputs(result: Result, json_path: str | Path | None, plots_dir: str | Path | None = None,
                  force: bool = False) -> str:
    """Write ``json_path`` and a markdown report beside it (``.md``), and the plots into ``plots_dir`` (their paths
    are added to ``result["plots"]``), by the rules of ``outputs.py`` (``force``: overwrite files longssm did not
    write). Returns the markdown report. Several processes: call it in rank 0 only."""
    report = markdown_report([result])
    check_eval_outputs(json_path, plots_dir, force)  # all of them before the first file is written
    if plots_dir:
        with staged_outputs(plots_dir, "--plots", force) as staging:
            names = [p.name for p in plot_all([result], staging, heatmap=False)]
        result["plots"] = [str(Path(plots_dir) / name) for name in names]
    if json_path:
        path = Path(json_path)
        write_texts({path: json.dumps(result, indent=2), report_path(path): report + "\n"}, "--json", force)
    return report


def load_result(path: str | Path) -> Result:
    """Read an eval result JSON; one-line ``UserError`` for a file that is not one, down to a metric entry of the
    wrong shape (each is read back with its metric's ``result_type.from_json``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such result file: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    names = metric_names()
    if not isinstance(data, dict) or not any(name in data for name in names):
        raise UserError(f"{path} is not a longssm eval result (none of the keys {', '.join(names)})")
    for name in names:
        if name in data:
            try:
                get_metric(name).result_type.from_json(data[name], name)
            except UserError as e:
                raise UserError(f"{path} is not a longssm eval result: {e}") from None
    return data


def report_path(json_path: Path) -> Path:
    """The markdown report written beside the result JSON ``json_path``: its name with suffix ``.md``."""
    return json_path.with_suffix(".md")


def check_eval_outputs(json_path: str | Path | None, plots_dir: str | Path | None, force: bool = False) -> None:
    """Check ``eval``'s output paths before anything is computed (``outputs.py``): the result JSON and its report
    beside it (which must be two files: ``--json`` may not end in ``.md``), and the plot directory."""
    if json_path:
        path = Path(json_path)
        if report_path(path) == path:
            raise UserError(f"--json {path} ends in .md, the name of the report written beside the JSON; "
                            f"give a .json name")
        check_file(path, "--json", force)
        check_file(report_path(path), "--json", force)
    if plots_dir:
        check_directory(plots_dir, "--plots")


def check_cache_dir(cfg: EvalConfig) -> None:
    """``--cache-dir``, when given and used: a directory outside every checkpoint and a run's own files
    (``outputs.py``, rule 1; its entries are named by hashes, so nothing else is overwritten there)."""
    if cfg.cache_dir and cfg.use_cache:
        check_directory(cfg.cache_dir, "--cache-dir")


COMPARE_FILES = ("compare.md", "compare.json")
"""What ``compare`` writes into its directory besides the plots."""


def check_output_dir(out_dir: str | Path, force: bool = False) -> Path:
    """``compare --out`` as a Path, checked before computing (``outputs.check_directory``): not a file, not inside
    a checkpoint or a run's own files, and its ``COMPARE_FILES`` not files that longssm did not write (unless
    ``force``)."""
    return check_directory(out_dir, "--out", COMPARE_FILES, force)


def compare(results: list[Result], out_dir: str | Path, force: bool = False) -> dict[str, Any]:
    """Overlay several eval results: every plot they have data for, the sweep heatmap (two results or more),
    ``compare.md`` and ``compare.json`` (verdicts and perplexities per run) in ``out_dir``, by the rules of
    ``outputs.py`` (``force``: overwrite files longssm did not write).

    With two results or more, the report ends with the paired differences of every other result against the
    first (``paired_differences``); results evaluated on other data, other numbers of targets or other lengths
    are a ``UserError``: their perplexities are not of the same evaluation.

    Returns ``{"report": markdown, "plots": [paths], "files": [compare.md, compare.json]}``."""
    out, results = check_output_dir(out_dir, force), with_unique_labels(results)
    paired = paired_differences(results)
    report = markdown_report(results) + (f"\n\n{paired['text']}" if paired["rows"] else "")
    with staged_outputs(out, "--out", force) as staging:
        plots = [out / p.name for p in plot_all(results, staging, heatmap=len(results) >= 2)]
        summary = {
            "runs": [{"label": run_label(r), "name": r.get("name"), "family": r.get("family"),
                      "scheme": r.get("scheme"), "train_seq_len": r.get("train_seq_len"),
                      "ppl_vs_length": r.get("ppl_vs_length"),
                      "length_extension": length_extension_of(r) if r.get("ppl_vs_length") else None}
                     for r in results],
            "plots": [str(p) for p in plots],
            "paired_differences": paired["rows"],
        }
        (staging / "compare.md").write_text(report + "\n")
        (staging / "compare.json").write_text(json.dumps(summary, indent=2))
    return {"report": report, "plots": plots, "files": [out / name for name in COMPARE_FILES]}
