"""The ``longssm`` command line. Each subcommand is a plain function; its signature is its configuration.

``longssm CMD --help`` lists every option, generated (``cli_options.py``) from the function's signature and
docstring and, where a command takes one, from the fields of ``RunConfig`` (``train``; the overrides of
``quickstart`` and ``sweep``) or ``EvalConfig`` (``eval``, ``compare``). ``--print-config`` prints the resolved
YAML and exits. This is the only module that maps config keys to flags: a ``ConfigError`` on key ``max_tokens`` is
shown as ``--max-tokens``, one on ``train.lr`` as ``--train.lr``. Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Literal

import yaml

from .cli_options import Command, OptionTable, Parsed
from .config import EvalConfig, RunConfig, apply_overrides, from_dict, leaf_fields, read_config_file, to_dict
from .errors import ConfigError, OutOfMemory, UserError, allocation_failure, os_error_line


def train(cfg: RunConfig, run_dir: str | None = None, resume: str | None = None, init_from: str | None = None,
          overwrite: bool = False, given: list[str] | None = None) -> None:
    """Train a model: a YAML config (--config) plus dotted overrides such as --train.lr 1e-3.

    --resume auto alone continues the run with its own saved config; a key given again must keep its value if it
    fixes what the step and the carried states mean (model.*, data.train, data.tokenizer, train.seq_len,
    train.batch_size, train.tokens_per_step, train.seed, state.*), any other key may change (train.steps, the
    learning rate, logging, checkpoints, ...): the changes are printed and recorded in the run's run.json.

    Args:
        run_dir: Run directory (default runs/<name>). One process at a time writes it (a second one exits 2).
        resume: 'auto' (the newest complete checkpoint of the run directory) or a checkpoint path.
        init_from: Start from these weights (a run, checkpoint, Hugging Face or mamba_ssm directory) with a new
            optimizer and schedule; their model config and tokenizer replace model.* and data.tokenizer (a model
            flag that disagrees with them is an error).
        overwrite: Replace the run already in the run directory (what trainings wrote there is deleted; other
            files stay).
    """
    from .train import train as run_training

    summary = run_training(cfg, run_dir or Path("runs") / cfg.name, resume=resume, init_from=init_from,
                           overwrite=overwrite, given=given)
    if _is_main_process():
        print(json.dumps(summary))


def evaluate(run: str, cfg: EvalConfig, json_out: str | None = None, plots: str | None = None,
             progress: bool = True, force: bool = False) -> None:
    """Evaluate a run or checkpoint: perplexity vs length and the other length-extension metrics, as an exact
    chunked recurrence (memory flat in L), cached per (checkpoint, data, metric, L) in <run>/eval_cache.

    Every perplexity comes with a 95 % interval over the evaluated text (--ci bootstrap: blocks of 4096 targets
    resampled; --ci none turns it off). The verdict past the training length T: none when some step from one
    length to the next rises and the paired bootstrap interval of that rise excludes zero; else strong when the
    longest length is below the first one at or past T by a change whose interval excludes zero; else weak. Without
    intervals a change counts when it exceeds 0.1 % (relative).

    Args:
        run: Run directory or checkpoint directory.
        json_out: Write the result JSON here (and a .md report beside it).
        plots: Write PNG plots (with CSV data beside them) into this directory.
        progress: Show progress bars (--no-progress turns them off).
        force: Overwrite existing output files that longssm did not write.
    """
    from .evaluate.run import check_cache_dir, check_eval_outputs, evaluate_run, report_path, write_outputs

    check_eval_outputs(json_out, plots, force)
    check_cache_dir(cfg)
    result = evaluate_run(run, cfg, progress=progress)
    if not _is_main_process():  # torchrun: every process has the result, rank 0 writes it
        return
    print(write_outputs(result, json_out, plots, force))
    for f in ([json_out, str(report_path(Path(json_out)))] if json_out else []) + result.get("plots", []):
        print(f"wrote {f}", file=sys.stderr)


def plot(results: list[str], out: str, title: str | None = None, force: bool = False) -> None:
    """Plot perplexity vs length of one or more eval JSON files.

    Args:
        results: Eval JSON files.
        out: Image file to write (.png, .pdf, .svg); the plotted numbers go beside it as .csv.
        title: Plot title.
        force: Overwrite existing output files that longssm did not write.
    """
    from .evaluate.plots import check_plot_path, finite_points, plot_ppl_vs_length
    from .evaluate.report import with_unique_labels
    from .evaluate.run import load_result
    from .outputs import check_file, staged_outputs

    path = check_plot_path(out)
    for target in (path, path.with_suffix(".csv")):
        check_file(target, "--out", force)
    loaded = [load_result(r) for r in results]
    if not all(r.get("ppl_vs_length") for r in loaded):
        raise UserError("every result needs 'ppl_vs_length' for this plot; use `longssm compare` for the other metrics")
    for name, result in zip(results, loaded):
        if not finite_points(result["ppl_vs_length"])[0]:
            raise UserError(f"{name} has no finite perplexity to plot (every ppl_vs_length value is inf or nan)")
    loaded = with_unique_labels(loaded, results)  # two runs named alike: told apart by their directory or file
    with staged_outputs(path.parent, "--out", force) as staging:
        plot_ppl_vs_length(loaded, staging / path.name, title)
    print(f"wrote {path} and {path.with_suffix('.csv')}")


def compare(results: list[str], out: str, cfg: EvalConfig, progress: bool = True, force: bool = False) -> None:
    """Overlay several runs: every metric's plot, the sweep heatmap and the verdicts.

    Args:
        results: Eval JSON files, or run directories (evaluated with the evaluation options below).
        out: Output directory (it may exist; files in it that longssm did not write are not overwritten).
        progress: Show progress bars (--no-progress turns them off).
        force: Overwrite existing output files that longssm did not write.
    """
    from .evaluate.run import check_cache_dir, check_output_dir, evaluate_run, load_result
    from .evaluate.run import compare as compare_results

    check_output_dir(out, force)
    check_cache_dir(cfg)
    loaded = [evaluate_run(r, cfg, progress=progress) if Path(r).is_dir() else load_result(r) for r in results]
    if not _is_main_process():  # torchrun: run directories were evaluated sharded; rank 0 writes the comparison
        return
    from .evaluate.report import with_unique_labels

    loaded = with_unique_labels(loaded, [None if Path(r).is_dir() else r for r in results])
    summary = compare_results(loaded, out, force)
    print(summary["report"])
    for f in summary["plots"] + summary["files"]:
        print(f"wrote {f}", file=sys.stderr)


def quickstart(out: str = "runs/quickstart", family: str = "mamba,s5", steps: int | None = None,
               tokenizer: str = "byte", eval_tokens: int = 65536, max_length: int = 32768, progress: bool = True,
               overrides: list[str] | None = None) -> None:
    """Zero vs previous initial state at T=16 on the shipped data, Mamba and S5: trainings, evaluation, table, plot.

    Dotted config keys (--model.d_model 64, train.lr=1e-3) override the config of both runs of every family.

    Args:
        out: Output directory (a sweep directory: rerun to resume).
        family: Comma-separated model families (any of model.family: mamba, mamba2, mamba3, s5, gru, lstm,
            deltanet, gated_deltanet, gla, swa), each trained twice.
        steps: Training steps per run (default 2000).
        tokenizer: byte, gpt2 or a tokenizer.json path.
        eval_tokens: Validation tokens evaluated at every length.
        max_length: Longest evaluation length.
        progress: Show progress bars (--no-progress turns them off).
    """
    from .quickstart import quickstart as run_quickstart

    run_quickstart(out, family, steps, tokenizer, eval_tokens, max_length, overrides=overrides, progress=progress)


def sweep(config_file: str | None = None, grid: list[str] | None = None, out: str = "runs/sweep",
          lengths: list[int] | None = None, eval_tokens: int = 65536, metrics: list[str] | None = None,
          seeds: int | None = None, progress: bool = True, overrides: dict[str, Any] | None = None) -> None:
    """Train every cell of a grid of config values (resumable), evaluate each, and write the table and plots.

    Dotted config keys (--train.steps 500, model.d_model=64) override the config of every cell; --grid keys vary
    over the cells.

    Args:
        config_file: YAML config of every cell (a file or a shipped config's name, e.g. paper/fig6_cpu).
        grid: KEY=V1,V2,... over any config key, e.g. --grid train.seq_len=16,64 --grid state.scheme=zero,previous;
            the cells are the cartesian product of the --grid options.
        out: Output directory: cells/ (each cell's run directory), results.md, results.json, plots. Rerun the
            same command to resume; a changed grid adds its new cells.
        lengths: Comma-separated evaluation lengths; default 16, 32, ..., 32768 up to what --eval-tokens holds.
        eval_tokens: Validation tokens evaluated at every length.
        metrics: Comma-separated metrics (ppl_vs_length is always computed).
        seeds: Train every cell with this many seeds (train.seed, train.seed + 1, ...; default the config's
            train.seeds, which the shipped paper configs set to 3); the table shows the mean ±
            the half-width of its 95 % t interval over the seeds, the plot a band, the verdicts and the zero vs
            previous sentence are decided over the seeds.
        progress: Show progress bars (--no-progress turns them off).
    """
    from .evaluate.registry import normalise_metrics
    from .sweep import sweep as run_sweep

    eval_cfg = EvalConfig(lengths=lengths, max_tokens=eval_tokens,
                          metrics=normalise_metrics(sorted({"ppl_vs_length", *(metrics or [])})))
    summary = run_sweep(config_file, grid or [], out, eval_cfg, overrides=overrides, progress=progress, seeds=seeds)
    print((Path(out) / "results.md").read_text())
    for f in summary["files"]:
        print(f"wrote {f}", file=sys.stderr)


def prepare(inputs: list[str], out: str, tokenizer: str = "byte",
            split: Literal["none", "wikitext", "blank-lines"] = "none", text_field: str = "text", eos: str = "auto",
            workers: int | None = None, limit_tokens: int | None = None, valid_fraction: float = 0.0,
            valid: list[str] | None = None, on_error: Literal["stop", "skip"] = "stop", hf_split: str = "train",
            shard_tokens: int = 1 << 28, overwrite: bool = False, progress: bool = True) -> None:
    """Tokenize a corpus once into a prepared dataset directory, which train and eval then read as their data.

    Streams any amount of text in constant memory with several processes; rerun the same command after an
    interruption to continue from the complete shards (the result is byte-identical). Writes DIR/manifest.json
    (tokenizer, every input with size and sha256, counts), DIR/train/tokens-*.bin (flat uint16 or uint32 token
    ids), DIR/train/docs.npy (document starts) and DIR/valid/ for a held-out split.

    Args:
        inputs: Text files, .jsonl / .jsonl.gz / .jsonl.zst, .parquet, Hugging Face datasets saved with save_to_disk,
            directories of them (searched recursively) and globs.
        out: The prepared dataset directory.
        tokenizer: byte, gpt2 or a tokenizer.json path: the data.tokenizer of the runs that read the dataset.
        split: How a text file is cut into documents: none (one per file), wikitext (at top-level " = Title = "
            headings) or blank-lines. Each jsonl line, parquet or dataset row is one document.
        text_field: The field (jsonl) or column (parquet, datasets) holding the text.
        eos: Token after every document: auto (the tokenizer's end-of-text token, <|endoftext|> for GPT-2; byte 0,
            NUL, for the byte tokenizer), none, or a token id.
        workers: Tokenizing processes (default: the cores).
        limit_tokens: Stop the train split after this many tokens (a quick subset).
        valid_fraction: Hold out this fraction of the documents (evenly spread) as the valid split.
        valid: A separate input for the valid split (once per input).
        on_error: A bad jsonl line or row: stop (an error naming file and line) or skip (left out, one warning per
            file).
        hf_split: The split of a saved Hugging Face DatasetDict.
        shard_tokens: Tokens per shard file (a shard closes at the first batch end past it).
        overwrite: Replace a prepared dataset (or unfinished prepare) of other settings in --out.
        progress: Show a progress bar (--no-progress turns it off).
    """
    from .data.prepare import prepare_dataset
    from .data.tokenizer import load_tokenizer

    eos_id: int | Literal["auto"] | None = "auto" if eos == "auto" else None if eos == "none" else _int_option(
        "--eos", eos, "auto, none or a token id")
    done = prepare_dataset(inputs, load_tokenizer(tokenizer), out, split=split, text_field=text_field, eos=eos_id,
                           workers=workers, limit_tokens=limit_tokens, valid_fraction=valid_fraction,
                           valid=valid or (), on_error=on_error, hf_split=hf_split, shard_tokens=shard_tokens,
                           overwrite=overwrite, progress=progress)
    parts = ", ".join(f"{info['tokens']:,} tokens in {info['documents']:,} documents ({name})"
                      for name, info in done.manifest["splits"].items())
    shards = sum(len(info["shards"]) for info in done.manifest["splits"].values())
    if done.up_to_date:
        print(f"{out} is up to date: {parts}")
        return
    rate = f", {done.input_bytes / 1e6 / done.seconds:.1f} MB/s" if done.input_bytes else ""
    resumed = f", continued after {done.resumed_shards} complete shard(s)" if done.resumed_shards else ""
    print(f"prepared {out}: {parts}, {shards} shard(s), {done.manifest['dtype']}, {done.seconds:.1f} s{rate}{resumed}")


def _int_option(flag: str, text: str, expected: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{flag} must be {expected}; got {text!r}") from None


def generate(run: str, prompt: str | None = None, prompt_file: str | None = None, max_new_tokens: int = 256,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             device: str = "auto", chunk: int = 1024) -> None:
    """Generate text from a run or checkpoint, streamed: the prompt through the chunked recurrence, then token by token.

    Decoding runs from the carried state, so memory does not grow with the prompt or the output. The text goes to
    stdout as it is produced (the continuation only, not the prompt), ended by a newline unless it ends in one.

    Args:
        run: Run directory or checkpoint directory.
        prompt: The prompt text.
        prompt_file: Read the prompt from this file instead.
        max_new_tokens: Tokens to generate.
        temperature: Sampling temperature; 0 = greedy.
        top_k: Sample from the k most likely tokens only.
        top_p: Sample from the smallest set of most likely tokens whose probability reaches p.
        seed: Random seed: the same seed gives the same text.
        device: auto, cpu, cuda or cuda:N.
        chunk: Prompt tokens per forward call.
    """
    from .generate import Sampler, generate_from_run, read_prompt_file

    if (prompt is None) == (prompt_file is None):
        raise UserError("give exactly one of --prompt TEXT and --prompt-file FILE")
    text = prompt if prompt_file is None else read_prompt_file(prompt_file)
    written = generate_from_run(run, text, max_new_tokens, Sampler(temperature, top_k, top_p), seed, device, chunk,
                                sys.stdout)
    if written and not written.endswith("\n"):
        print()


def lm_eval(run: str, tasks: list[str], include_path: str | None = None, limit: float | None = None,
            batch_size: int = 8, output: str | None = None, device: str = "auto", chunk: int = 1024,
            eot: str = "\n", force: bool = False) -> None:
    """Run lm-evaluation-harness tasks on a run or checkpoint, every document in one stateful pass (no windows).

    Prints the harness's table. Documents are scored whole, at any length, with the chunked recurrence.

    Args:
        run: Run directory or checkpoint directory.
        tasks: Comma-separated task names (the harness's, or tasks in --include-path).
        include_path: A folder of task YAMLs (e.g. local data: dataset_path json, data_files).
        limit: Examples per task (a number < 1: a fraction of each task), for a quick look.
        batch_size: Requests scored together.
        output: Write the harness's results JSON here.
        device: auto, cpu, cuda or cuda:N.
        chunk: Tokens per forward call.
        eot: End-of-text token: the context of a document's first token (default a newline; one token).
        force: Overwrite an existing output file that longssm did not write.
    """
    from .lm_eval_adapter import LongSSMLM, check_limit, evaluate_tasks, results_table

    check_limit(limit)  # before the model is loaded
    results = evaluate_tasks(LongSSMLM(run, device=device, batch_size=batch_size, chunk=chunk, eot=eot), tasks,
                             include_path, limit, output, force)
    print(results_table(results))
    if output:
        print(f"wrote {output}", file=sys.stderr)


def tasks_command(action: str, out: str, tasks: list[str], cfg: EvalConfig, tokenizer: str = "byte",
                  force: bool = False) -> None:
    """Long-context tasks offline: `tasks export` writes mqar, copy, niah_*, variable_tracking and passkey as
    lm-evaluation-harness tasks (a folder of task YAMLs for `longssm lm-eval`).

    The instances are those that `longssm eval` scores as the metric of the same name with the same settings
    (tokenizer, task lengths, trials, haystack, seed, axis values and task keys), one loglikelihood request per
    answer: the text before it as the context, the answer as the target, acc = the share of answers whose every
    token is the argmax.
    The folder holds TASK.jsonl and TASK.yaml (the harness task longssm_TASK) per task, manifest.json and README.md
    (settings, counts, and the commands that score it).

    Args:
        action: export (the only action so far).
        out: Output directory (it may exist; files in it that longssm did not write are not overwritten).
        tasks: Comma-separated tasks: mqar, copy, niah_multikey, niah_multivalue, niah_multiquery,
            variable_tracking, passkey.
        tokenizer: byte, gpt2 or a tokenizer.json path: the data.tokenizer of the runs to score.
        force: Overwrite existing output files that longssm did not write.
    """
    if action != "export":
        raise UserError(f"unknown action {action!r} (actions: export)")
    from .task_export import export_tasks

    manifest = export_tasks(out, tasks, tokenizer, cfg, force)
    for task in manifest["tasks"].values():
        print(f"{task['lm_eval_task']}: {task['requests']} requests from {task['instances']} instances "
              f"(lengths {','.join(map(str, task['lengths']))}; {task['axis']} "
              f"{','.join(f'{v:g}' for v in task['axis_values'])})")
    print(f"wrote {out}: score with `{manifest['commands']['lm_eval']}`")


def import_checkpoint(path: str, out: str, tokenizer: str | None = None) -> None:
    """Import a Hugging Face (Mamba, Mamba2), fla (GatedDeltaNet, DeltaNet, GLA) or original mamba_ssm checkpoint
    directory as a longssm run directory.

    Args:
        path: Directory with config.json and model.safetensors / pytorch_model.bin (or their .index.json shards).
        out: Run directory to write (must not exist; written atomically).
        tokenizer: byte, gpt2 or a tokenizer.json path; default the directory's tokenizer.json.
    """
    from .convert import import_checkpoint as run_import

    print(f"wrote {run_import(path, out, tokenizer)}")


def export(run: str, out: str, format: Literal["hf", "mamba_ssm"] = "hf") -> None:
    """Export a run or checkpoint (hf: mamba, mamba2; gated_deltanet, deltanet, gla with an MLP, as fla's classes;
    mamba_ssm: mamba, mamba2, mamba3) as a directory that transformers' from_pretrained loads (fla's models after
    `import fla`), or that mamba_ssm's MambaLMHeadModel reads.

    Args:
        run: Run directory or checkpoint directory.
        out: Directory to write (must not exist; written atomically).
        format: hf (config.json + model.safetensors + tokenizer.json, as save_pretrained writes them) or mamba_ssm
            (config.json with ssm_cfg + model.safetensors with mamba_ssm's names; Mamba-3 has only this format).
    """
    from .convert import export_hf, export_mamba_ssm

    print(f"wrote {(export_mamba_ssm if format == 'mamba_ssm' else export_hf)(run, out)}")


def calibrate(run: str, method: Literal["delta_scale", "a_scale"], target_length: int, data: str, out: str,
              steps: int = 20, lr: float = 0.1, windows: int = 4, chunk: int = 1024) -> None:
    """Training-free length extension: learn one scale per layer of Δ (delta_scale) or A (a_scale), weights frozen.

    Adam on the log-scales minimises the loss of target-length windows of --data (full-length gradients through the
    checkpointed chunked recurrence; about 3 forward passes of target_length tokens per step). The output is an
    ordinary run: the same weights, the scales in its model config.

    Args:
        run: Run directory or checkpoint directory (mamba or mamba2).
        method: delta_scale (MambaExtend: Δ per layer) or a_scale (Mamba Modulation: A per layer).
        target_length: Length L of the calibration windows.
        data: Calibration text (or .npy token file).
        out: Run directory to write (must not exist).
        steps: Adam steps, one window each.
        lr: Adam learning rate of the log-scales.
        windows: Consecutive windows of the data cycled through.
        chunk: Tokens per checkpointed chunk of the recurrence.
    """
    from .calibrate import calibrate_run

    summary = calibrate_run(run, method, target_length, data, out, steps, lr, windows, chunk)
    print(json.dumps(summary))


def _is_main_process() -> bool:
    """False in every torchrun process but rank 0, so a summary is printed once."""
    return os.environ.get("RANK", "0") == "0"


TASK_KEYS = tuple(f.key for f in leaf_fields(EvalConfig) if f.key in ("seed", "passkey_digits")
                  or f.key.startswith(("task_", "mqar_", "copy_", "niah_", "vt_")))
"""The ``EvalConfig`` keys of the long-context tasks: the options of ``tasks export``."""

COMMANDS: dict[str, Command] = {
    "train": Command(train, RunConfig, switches=(("progress", "train.progress"),)),
    "eval": Command(evaluate, EvalConfig, positional=("run",), flags=(("json_out", "json"), ("use_cache", "cache"))),
    "plot": Command(plot, positional=("results",)),
    "compare": Command(compare, EvalConfig, positional=("results",), flags=(("use_cache", "cache"),)),
    "quickstart": Command(quickstart, overrides=True),
    "sweep": Command(sweep, flags=(("config_file", "config"),), repeated=("grid",), overrides=True),
    "prepare": Command(prepare, positional=("inputs",), repeated=("valid",)),
    "generate": Command(generate, positional=("run",)),
    "lm-eval": Command(lm_eval, positional=("run",)),
    "tasks": Command(tasks_command, EvalConfig, positional=("action",), config_keys=TASK_KEYS),
    "import": Command(import_checkpoint, positional=("path",)),
    "export": Command(export, positional=("run",)),
    "calibrate": Command(calibrate, positional=("run",)),
}


@functools.cache
def option_table(name: str) -> OptionTable:
    """The option table of subcommand ``name`` (built on first use)."""
    return OptionTable(name, COMMANDS[name])


def _summary(function: Any) -> str:
    return " ".join((function.__doc__ or "").strip().split("\n\n")[0].split())


def build_config(cls: type, parsed: Parsed) -> Any:
    """The command's config: ``--config`` (if given), then the config options in the order typed; checked, with
    the names only a registry knows (``model.family``, ``--metrics``) checked too, before any work starts. A
    ``train --resume`` starts from the run's saved config instead of the defaults."""
    data = read_config_file(parsed.config_file) if parsed.config_file is not None else {}
    cfg = from_dict(cls, apply_overrides(data, parsed.config))
    if cls is RunConfig:
        if parsed.params.get("resume") is not None:
            cfg = resumed_config(cfg, parsed, data)
        from .models.registry import get_family

        get_family(cfg.model.family)
        return cfg
    from .evaluate.registry import normalise_metrics

    cfg.metrics = normalise_metrics(cfg.metrics)
    return cfg


def resumed_config(cfg: RunConfig, parsed: Parsed, data: dict[str, Any]) -> RunConfig:
    """The config of ``train --resume``: the saved config of the run (``train.resume.saved_config``) with the
    ``--config`` file's ``data`` and the typed keys on top; ``cfg`` (defaults, file, keys) when the run directory
    holds none."""
    from .train.resume import saved_config

    run_dir = Path(parsed.params.get("run_dir") or Path("runs") / cfg.name)
    saved = saved_config(run_dir, parsed.params["resume"])
    if saved is None:
        return cfg
    return from_dict(RunConfig, apply_overrides(apply_overrides(to_dict(saved), data), parsed.config))


def given_keys(parsed: Parsed) -> list[str]:
    """The dotted config keys the user set: in the ``--config`` file and on the command line."""
    from .train.resume import flat_config

    data = read_config_file(parsed.config_file) if parsed.config_file is not None else {}
    return sorted({*flat_config(data), *parsed.config})


def run_command(name: str, args: list[str]) -> None:
    """Parse ``args`` for subcommand ``name`` and run it; bad input raises ``UserError``."""
    command, table = COMMANDS[name], option_table(name)
    parsed = table.parse(args)
    if parsed.help:
        print(table.help(), end="")
        return
    kwargs = dict(parsed.params)
    if command.config is not None:
        cfg = build_config(command.config, parsed)
        if parsed.print_config:
            if command.config is RunConfig:  # as the run's config.yaml will hold it, checked as far as no data is read
                from .train.setup import check_config

                cfg = check_config(cfg)
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return
        kwargs["cfg"] = cfg
        if name == "train":
            kwargs["given"] = given_keys(parsed)
    if command.overrides:
        kwargs["overrides"] = parsed.config
    command.function(**kwargs)


def overview() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: longssm COMMAND [options]   (longssm COMMAND --help lists every option)", "",
             "Train recurrent LMs on short windows, run them on unbounded context.", "", "commands:"]
    lines += [f"  {name:<{width}}  {_summary(c.function)}" for name, c in COMMANDS.items()]
    return "\n".join(lines)


MEMORY_SETTINGS = ("model.family", "model.d_model", "model.n_layers", "model.d_state", "model.expand",
                   "train.batch_size", "train.tokens_per_step", "train.seq_len", "train.grad_accum", "chunk",
                   "batch_size", "max_length", "target_length", "max_new_tokens")
"""Config keys and options that size what a command allocates, named by an out-of-memory error."""


def _memory_settings(name: str, args: list[str]) -> str:
    """`` (model.d_model=4096, train.batch_size=512, ...)``: the values of ``MEMORY_SETTINGS`` that command ``name``
    ran with (its config resolved again from ``args``, flags spelled as typed), or "" when they cannot be read."""
    try:
        parsed = option_table(name).parse(args)
        command = COMMANDS[name]
        values = dict(parsed.params)
        if command.config is not None:
            cfg = to_dict(build_config(command.config, parsed))
            values |= {f"{section}.{key}": v for section, keys in cfg.items() if isinstance(keys, dict)
                       for key, v in keys.items()} | cfg
    except Exception:  # the error being reported matters more than its context
        return ""
    shown = [f"{key if '.' in key else option_table(name).flag_of(key)}={values[key]}" for key in MEMORY_SETTINGS
             if values.get(key) is not None]
    return f" ({', '.join(shown)})" if shown else ""


def _stdout_closed() -> int:
    """The exit code of a command whose stdout was closed by its reader (``| head``): 141, as a Unix tool killed by
    SIGPIPE, with stdout pointed at /dev/null so that the interpreter's flush at exit has nowhere to fail."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def _print(text: str, code: int) -> int:
    """Print ``text`` to stdout now; ``code``, or ``_stdout_closed()``'s when nobody reads it."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        return _stdout_closed()
    return code


def _error(name: str, text: str) -> None:
    """The one error line of a failed command, printed by rank 0 only under torchrun (every process checks the same
    inputs and fails the same way; one line, not one per process glued together)."""
    if _is_main_process():
        print(f"longssm {name}: error: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        return _print(overview(), 0 if argv else 2)
    if argv[0] == "--version":
        from importlib.metadata import version

        return _print(f"longssm {version('longssm')}", 0)
    name = argv[0]
    if name not in COMMANDS:
        print(f"longssm: error: unknown command {name!r} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    try:
        run_command(name, argv[1:])
        sys.stdout.flush()  # a closed pipe fails here, not in the interpreter's flush at exit
    except ConfigError as e:  # the key spelled as the flag that sets it
        _error(name, e.render(option_table(name).flag_of))
        return 2
    except UserError as e:
        _error(name, str(e))
        return 2
    except BrokenPipeError:  # the reader of stdout went away (`longssm generate ... | head`): stop quietly
        return _stdout_closed()
    except OSError as e:  # the user's path (exit 2) or the machine (a full disk, ...: exit 1), in plain words
        line, code = os_error_line(e)
        _error(name, line)
        return code
    except OutOfMemory as e:
        _error(name, str(e))
        return 1
    except (RuntimeError, MemoryError) as e:  # an allocation that no code below caught with its config
        tried = allocation_failure(e)
        if tried is None:
            raise
        _error(name, f"out of memory{_memory_settings(name, argv[1:])}: {tried}")
        return 1
    except KeyboardInterrupt as e:  # train's (``Stopped``) carries where it saved the step in flight
        signum = getattr(e, "signum", signal.SIGINT)
        if _is_main_process():
            what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
            print(f"longssm {name}: {what}" + (f"; {e}" if str(e) else ""), file=sys.stderr)
        return 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM: the shell's codes for these signals
    return 0


if __name__ == "__main__":
    sys.exit(main())
