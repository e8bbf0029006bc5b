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
from .config import EvalConfig, RunConfig, apply_overrides, from_dict, load_config, read_config_file, to_dict
from .errors import ConfigError, UserError


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

    Dotted config keys (--model.d_model 64, train.lr=1e-3) override the config of both runs of every family.

    Args:
        out: Output directory (a sweep directory: rerun to resume).
        family: Comma-separated model families (mamba, mamba2, s5, gru, lstm), each trained twice.
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
          progress: bool = True, overrides: dict[str, Any] | None = None) -> None:
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
        progress: Show progress bars (--no-progress turns them off).
    """
    from .evaluate.registry import normalise_metrics
    from .sweep import sweep as run_sweep

    eval_cfg = EvalConfig(lengths=lengths, max_tokens=eval_tokens,
                          metrics=normalise_metrics(sorted({"ppl_vs_length", *(metrics or [])})))
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

    print(f"wrote {run_import(path, out, tokenizer)}")


def export(run: str, out: str, format: Literal["hf"] = "hf") -> None:
    """Export a run or checkpoint (mamba, mamba2) as a directory that transformers' from_pretrained loads.

    Args:
        run: Run directory or checkpoint directory.
        out: Directory to write (must not exist; written atomically).
        format: hf (config.json + model.safetensors + tokenizer.json, as save_pretrained writes them).
    """
    from .convert import export_hf

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

    summary = calibrate_run(run, method, target_length, data, out, steps, lr, windows, chunk)
    print(json.dumps(summary))


def _is_main_process() -> bool:
    """False in every torchrun process but rank 0, so a summary is printed once."""
    return os.environ.get("RANK", "0") == "0"


COMMANDS: dict[str, Command] = {
    "train": Command(train, RunConfig, switches=(("progress", "train.progress"),)),
    "eval": Command(evaluate, EvalConfig, positional=("run",), flags=(("json_out", "json"), ("use_cache", "cache"))),
    "plot": Command(plot, positional=("results",)),
    "compare": Command(compare, EvalConfig, positional=("results",), flags=(("use_cache", "cache"),)),
    "quickstart": Command(quickstart, overrides=True),
    "sweep": Command(sweep, flags=(("config_file", "config"),), repeated=("grid",), overrides=True),
    "generate": Command(generate, positional=("run",)),
    "lm-eval": Command(lm_eval, positional=("run",)),
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
    the names only a registry knows (``model.family``, ``--metrics``) checked too, before any work starts."""
    if cls is RunConfig:
        cfg = load_config(parsed.config_file, parsed.config)
        from .models.registry import get_family

        get_family(cfg.model.family)
        return cfg
    data = read_config_file(parsed.config_file) if parsed.config_file is not None else {}
    cfg = from_dict(cls, apply_overrides(data, parsed.config))
    from .evaluate.registry import normalise_metrics

    cfg.metrics = normalise_metrics(cfg.metrics)
    return cfg


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
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return
        kwargs["cfg"] = cfg
    if command.overrides:
        kwargs["overrides"] = parsed.config
    command.function(**kwargs)


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
    except ConfigError as e:  # the key spelled as the flag that sets it
        print(f"longssm {name}: error: {e.render(option_table(name).flag_of)}", file=sys.stderr)
        return 2
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
