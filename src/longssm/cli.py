"""The ``longssm`` command line. Each subcommand is a plain function; its signature is its configuration.

``longssm CMD --help`` lists every option, generated from the function's signature and docstring and, where a
command takes one, from the fields of ``RunConfig`` (``train``) or ``EvalConfig`` (``eval``, ``compare``).
``--print_config`` prints the resolved YAML and exits. Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .config import EvalConfig, RunConfig
from .errors import UserError


def train(cfg: RunConfig, run_dir: str | None = None, resume: str | None = None, init_from: str | None = None,
          overwrite: bool = False) -> None:
    """Train a model: a YAML config (--config) plus dotted overrides such as --train.lr 1e-3.

    Args:
        run_dir: Run directory (default runs/<name>).
        resume: 'auto' (the newest complete checkpoint of the run directory) or a checkpoint path.
        init_from: Start from these weights (a run, checkpoint, Hugging Face or mamba_ssm directory) with a new
            optimizer and schedule; their model config and tokenizer replace model.* and data.tokenizer.
        overwrite: Replace the run already in the run directory (its checkpoints, final/ and metrics are deleted).
    """
    from .train import train as run_training

    summary = run_training(cfg, run_dir or Path("runs") / cfg.name, resume=resume, init_from=init_from,
                           overwrite=overwrite)
    if _is_main_process():
        print(json.dumps(summary))


def evaluate(run: str, cfg: EvalConfig, json_out: str | None = None, plots: str | None = None,
             progress: bool = True) -> None:
    """Evaluate a run or checkpoint: perplexity vs length and the other length-extension metrics, as an exact
    chunked recurrence (memory flat in L), cached per (checkpoint, data, metric, L) in <run>/eval_cache.

    Args:
        run: Run directory or checkpoint directory.
        json_out: Write the result JSON here (and a .md report beside it).
        plots: Write PNG plots (with CSV data beside them) into this directory.
        progress: Show progress bars (--no-progress turns them off).
    """
    from .evaluate.run import evaluate_run, write_outputs

    result = evaluate_run(run, cfg, progress=progress)
    if not _is_main_process():  # torchrun: every process has the result, rank 0 writes it
        return
    print(write_outputs(result, json_out, plots))
    for f in ([json_out, str(Path(json_out).with_suffix(".md"))] if json_out else []) + result.get("plots", []):
        print(f"wrote {f}", file=sys.stderr)


def plot(results: list[str], out: str, title: str | None = None) -> None:
    """Plot perplexity vs length of one or more eval JSON files.

    Args:
        results: Eval JSON files.
        out: Image file to write (.png, .pdf, .svg); the plotted numbers go beside it as .csv.
        title: Plot title.
    """
    from .evaluate.plots import check_plot_path, plot_ppl_vs_length
    from .evaluate.run import load_result

    check_plot_path(out)
    loaded = [load_result(r) for r in results]
    if not all(r.get("ppl_vs_length") for r in loaded):
        raise UserError("every result needs 'ppl_vs_length' for this plot; use `longssm compare` for the other metrics")
    path = plot_ppl_vs_length(loaded, out, title)
    print(f"wrote {path} and {Path(path).with_suffix('.csv')}")


def compare(results: list[str], out: str, cfg: EvalConfig, progress: bool = True) -> None:
    """Overlay several runs: every metric's plot, the sweep heatmap and the verdicts.

    Args:
        results: Eval JSON files, or run directories (evaluated with the evaluation options below).
        out: Output directory.
        progress: Show progress bars (--no-progress turns them off).
    """
    from .evaluate.run import check_output_dir, evaluate_run, load_result
    from .evaluate.run import compare as compare_results

    check_output_dir(out)
    loaded = [evaluate_run(r, cfg, progress=progress) if Path(r).is_dir() else load_result(r) for r in results]
    if not _is_main_process():  # torchrun: run directories were evaluated sharded; rank 0 writes the comparison
        return
    summary = compare_results(loaded, out)
    print(summary["report"])
    for f in summary["plots"] + summary["files"]:
        print(f"wrote {f}", file=sys.stderr)


def quickstart(out: str = "runs/quickstart", family: str = "mamba,s5", steps: int | None = None,
               tokenizer: str = "byte", eval_tokens: int = 65536, max_length: int = 32768, progress: bool = True,
               overrides: list[str] | None = None) -> None:
    """Zero vs previous initial state at T=16 on the shipped data, Mamba and S5: trainings, evaluation, table, plot.

    Args:
        out: Output directory (a sweep directory: rerun to resume).
        family: Comma-separated model families (mamba, mamba2, s5, gru, lstm), each trained twice.
        steps: Training steps per run (default 2000).
        tokenizer: byte, gpt2 or a tokenizer.json path.
        eval_tokens: Validation tokens evaluated at every length.
        max_length: Longest evaluation length.
        progress: Show progress bars (--no-progress turns them off).
        overrides: Dotted config keys for both runs, e.g. --model.d_model 64 (given directly, not as a list).
    """
    from .quickstart import quickstart as run_quickstart

    run_quickstart(out, family, steps, tokenizer, eval_tokens, max_length, overrides=overrides, progress=progress)


def sweep(config_file: str | None = None, grid: list[str] | None = None, out: str = "runs/sweep",
          lengths: list[int] | None = None, eval_tokens: int = 65536, metrics: list[str] | None = None,
          progress: bool = True, overrides: list[str] | None = None) -> None:
    """Train every cell of a grid of config values (resumable), evaluate each, and write the table and plots.

    Args:
        config_file: YAML config of every cell (a file or a shipped config's name, e.g. paper/fig6_cpu); also
            given as --config.
        grid: KEY=V1,V2,... over any config key, e.g. --grid train.seq_len=16,64 --grid state.scheme=zero,previous;
            the cells are the cartesian product of the --grid options.
        out: Output directory: cells/ (each cell's run directory), results.md, results.json, plots. Rerun the
            same command to resume; a changed grid adds its new cells.
        lengths: Comma-separated evaluation lengths; default 16, 32, ..., 32768 up to what --eval-tokens holds.
        eval_tokens: Validation tokens evaluated at every length.
        metrics: Comma-separated metrics (ppl_vs_length is always computed).
        progress: Show progress bars (--no-progress turns them off).
        overrides: Dotted config keys for every cell, e.g. --train.steps 500 (given directly, not as a list).
    """
    from .sweep import sweep as run_sweep

    eval_cfg = EvalConfig(lengths=lengths, max_tokens=eval_tokens,
                          metrics=sorted({"ppl_vs_length", *(metrics or [])}))
    summary = run_sweep(config_file, grid or [], out, eval_cfg, overrides=overrides, progress=progress)
    print((Path(out) / "results.md").read_text())
    for f in summary["files"]:
        print(f"wrote {f}", file=sys.stderr)


def generate(run: str, prompt: str | None = None, prompt_file: str | None = None, max_new_tokens: int = 256,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             device: str = "auto", chunk: int = 1024) -> None:
    """Generate text from a run or checkpoint, streamed: the prompt through the chunked recurrence, then token by token.

    Decoding runs from the carried state, so memory does not grow with the prompt or the output. The text goes to
    stdout as it is produced (the continuation only, not the prompt).

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
    from .generate import Sampler, generate_from_run

    if not run:
        raise UserError("missing argument: run (a run or checkpoint directory)")
    if (prompt is None) == (prompt_file is None):
        raise UserError("give exactly one of --prompt TEXT and --prompt-file FILE")
    text = prompt if prompt_file is None else Path(prompt_file).read_text(encoding="utf-8")
    generate_from_run(run, text, max_new_tokens, Sampler(temperature, top_k, top_p), seed, device, chunk, sys.stdout)
    print()


def lm_eval(run: str, tasks: list[str], include_path: str | None = None, limit: float | None = None,
            batch_size: int = 8, output: str | None = None, device: str = "auto", chunk: int = 1024,
            eot: str = "\n") -> None:
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
    """
    from .lm_eval_adapter import LongSSMLM, evaluate_tasks, results_table

    if not run:
        raise UserError("missing argument: run (a run or checkpoint directory)")
    results = evaluate_tasks(LongSSMLM(run, device=device, batch_size=batch_size, chunk=chunk, eot=eot), tasks,
                             include_path, limit, output)
    print(results_table(results))
    if output:
        print(f"wrote {output}", file=sys.stderr)


def import_checkpoint(path: str, out: str, tokenizer: str | None = None) -> None:
    """Import a Hugging Face (Mamba, Mamba2) or original mamba_ssm checkpoint directory as a longssm run directory.

    Args:
        path: Directory with config.json and model.safetensors / pytorch_model.bin (or their .index.json shards).
        out: Run directory to write (must not exist; written atomically).
        tokenizer: byte, gpt2 or a tokenizer.json path; default the directory's tokenizer.json.
    """
    from .convert import import_checkpoint as run_import

    if not path:
        raise UserError("missing argument: path (a checkpoint directory)")
    print(f"wrote {run_import(path, out, tokenizer)}")


def export(run: str, out: str, format: Literal["hf"] = "hf") -> None:
    """Export a run or checkpoint (mamba, mamba2) as a directory that transformers' from_pretrained loads.

    Args:
        run: Run directory or checkpoint directory.
        out: Directory to write (must not exist; written atomically).
        format: hf (config.json + model.safetensors + tokenizer.json, as save_pretrained writes them).
    """
    from .convert import export_hf

    if not run:
        raise UserError("missing argument: run (a run or checkpoint directory)")
    print(f"wrote {export_hf(run, out)}")


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

    if not run:
        raise UserError("missing argument: run (a run or checkpoint directory)")
    summary = calibrate_run(run, method, target_length, data, out, steps, lr, windows, chunk)
    print(json.dumps(summary))


def _is_main_process() -> bool:
    """False in every torchrun process but rank 0, so a summary is printed once."""
    return os.environ.get("RANK", "0") == "0"


@dataclass(frozen=True)
class Command:
    function: Callable[..., None]
    config: type | None = None
    """Dataclass whose fields are options of this command (passed as ``cfg``)."""
    positional: tuple[tuple[str, str], ...] = ()
    """(name, nargs) of positional arguments."""
    aliases: tuple[tuple[str, str], ...] = ()
    """(flag the user types, option it means)."""


COMMANDS: dict[str, Command] = {
    "train": Command(train, RunConfig, aliases=(("--no-progress", "--train.progress=false"),)),
    "eval": Command(evaluate, EvalConfig, positional=(("run", "?"),),
                    aliases=(("--json", "--json_out"), ("--no-cache", "--use_cache=false"))),
    "plot": Command(plot, positional=(("results", "+"),)),
    "compare": Command(compare, EvalConfig, positional=(("results", "+"),),
                       aliases=(("--no-cache", "--use_cache=false"),)),
    "quickstart": Command(quickstart),
    "sweep": Command(sweep, aliases=(("--config", "--config_file"),)),
    "generate": Command(generate, positional=(("run", "?"),)),
    "lm-eval": Command(lm_eval, positional=(("run", "?"),)),
    "import": Command(import_checkpoint, positional=(("path", "?"),)),
    "export": Command(export, positional=(("run", "?"),)),
    "calibrate": Command(calibrate, positional=(("run", "?"),)),
}


def _summary(function: Callable) -> str:
    return " ".join((function.__doc__ or "").strip().split("\n\n")[0].split())


def build_parser(name: str) -> tuple[Any, dict[str, Any]]:
    """The jsonargparse parser of subcommand ``name`` and the option types (dotted key -> type)."""
    from .cli_parsing import add_dataclass, function_types, new_parser

    command = COMMANDS[name]
    parser = new_parser(prog=f"longssm {name}", description=_summary(command.function))
    types: dict[str, Any] = {}
    if command.config is not None:
        types.update(add_dataclass(parser, command.config))
    skip = {"cfg", "overrides"} | {p for p, _ in command.positional}
    parser.add_function_arguments(command.function, nested_key=None, as_group=False, skip=skip, fail_untyped=True)
    for positional, nargs in command.positional:
        parser.add_argument(positional, nargs=nargs, help=_arg_doc(command.function, positional))
    types.update(function_types(command.function, skip))
    return parser, types


def _arg_doc(function: Callable, name: str) -> str:
    doc = function.__doc__ or ""
    for line in doc.splitlines():
        if line.strip().startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    return ""


def split_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """Quickstart: separate its own options from dotted config overrides (``--model.d_model 64``, ``a.b=1``)."""
    own, overrides = [], []
    i = 0
    while i < len(args):
        arg = args[i]
        key = arg.lstrip("-").split("=", 1)[0]
        dotted = "." in key and (arg.startswith("--") or not arg.startswith("-"))
        if dotted:
            takes_value = "=" not in arg and i + 1 < len(args) and not args[i + 1].startswith("--")
            overrides += args[i:i + 1 + takes_value]
            i += 1 + takes_value
        else:
            own.append(arg)
            i += 1
    return own, overrides


def run_command(name: str, args: list[str]) -> None:
    """Parse ``args`` for subcommand ``name`` and run it; bad input raises ``UserError``."""
    from jsonargparse import ArgumentError

    from .cli_parsing import build_dataclass, namespace_dict, normalise_args, one_line_error, resolve_config_args

    command = COMMANDS[name]
    overrides: list[str] = []
    if name == "quickstart":
        args, overrides = split_overrides(args)
        from .config import load_config

        load_config(None, overrides)  # a bad key fails now, before any training
    elif name == "sweep":
        from .sweep import split_sweep_args

        args, overrides = split_sweep_args(args)
    parser, types = build_parser(name)
    aliases = dict(command.aliases)
    args = [aliases.get(a, a) for a in args]
    try:
        ns = parser.parse_args(resolve_config_args(normalise_args(args, types)))
    except ArgumentError as e:
        raise one_line_error(e, types) from None
    values = namespace_dict(ns)
    kwargs: dict[str, Any] = {}
    if command.config is not None:
        fields = {f.name for f in dataclasses.fields(command.config)}
        kwargs["cfg"] = build_dataclass(command.config, {k: values.pop(k) for k in list(values) if k in fields})
    if name in ("quickstart", "sweep"):
        kwargs["overrides"] = overrides
    if name == "eval" and not values.get("run"):
        raise UserError("missing argument: run (a run or checkpoint directory)")
    command.function(**values, **kwargs)


def overview() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: longssm COMMAND [options]   (longssm COMMAND --help lists every option)", "",
             "Train recurrent LMs on short windows, run them on unbounded context.", "", "commands:"]
    lines += [f"  {name:<{width}}  {_summary(c.function)}" for name, c in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return 0 if argv else 2
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"longssm {version('longssm')}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"longssm: error: unknown command {name!r} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    try:
        run_command(name, argv[1:])
    except UserError as e:
        print(f"longssm {name}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        print(f"longssm {name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine, not the input: a full disk, ...
        print(f"longssm {name}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # train's (``Stopped``) carries where it saved the step in flight
        signum = getattr(e, "signum", signal.SIGINT)
        if _is_main_process():
            what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
            print(f"longssm {name}: {what}" + (f"; {e}" if str(e) else ""), file=sys.stderr)
        return 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM: the shell's codes for these signals
    except SystemExit as e:  # --help and --print_config exit through argparse
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
