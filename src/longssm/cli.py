"""The ``longssm`` command line. Each subcommand is a plain function; its signature is its configuration."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import UserError


def train_command(config: str | None, run_dir: str | None, resume: str | None, overrides: list[str], no_progress: bool = False) -> None:
    from .config import load_config
    from .train import train

    if no_progress:
        overrides = overrides + ["--train.progress", "false"]
    cfg = load_config(config, overrides)
    summary = train(cfg, run_dir or Path("runs") / cfg.name, resume=resume)
    print(json.dumps(summary))


def eval_command(run: str, data: str | None, lengths: str | None, json_out: str | None, max_tokens: int | None,
                 chunk: int, device: str, no_progress: bool = False, **extra) -> None:
    from .evaluate.perplexity import parse_lengths
    from .evaluate.run import evaluate_run, write_outputs

    result = evaluate_run(run, data, parse_lengths(lengths) if lengths else None, max_tokens, chunk, device=device, progress=not no_progress)
    print(write_outputs(result, json_out))


def plot_command(results: list[str], out: str, title: str | None = None) -> None:
    from .evaluate.plots import plot_ppl_vs_length
    from .evaluate.run import load_result

    path = plot_ppl_vs_length([load_result(r) for r in results], out, title)
    print(f"wrote {path} and {path.with_suffix('.csv')}")


def quickstart_command(out: str, family: str, steps: int | None, tokenizer: str, eval_tokens: int, max_length: int,
                       no_progress: bool = False) -> None:
    from .quickstart import quickstart

    quickstart(out, family, steps, tokenizer, eval_tokens, max_length, progress=not no_progress)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longssm", description="Train recurrent LMs on short windows, run them on unbounded context.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (config YAML + dotted overrides such as --train.lr 1e-3)")
    t.add_argument("--config", help="YAML config (see configs/)")
    t.add_argument("--run-dir", help="run directory (default runs/<name>)")
    t.add_argument("--resume", help="'auto' (newest complete checkpoint of the run directory) or a checkpoint path")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="evaluate a run or checkpoint: perplexity vs length and more")
    e.add_argument("run", help="run directory or checkpoint directory")
    e.add_argument("--data", help="text or .npy token file (default: the run's validation file)")
    e.add_argument("--lengths", help="comma-separated evaluation lengths (default 16,32,...,32768)")
    e.add_argument("--json", dest="json_out", help="write results JSON here (and a .md table beside it)")
    e.add_argument("--max-tokens", type=int, help="use at most this many evaluation tokens per length")
    e.add_argument("--chunk", type=int, default=1024, help="tokens per chunk of the chunked recurrence")
    e.add_argument("--device", default="auto")
    e.add_argument("--no-progress", action="store_true")

    pl = sub.add_parser("plot", help="plot perplexity vs length of one or more eval JSON files")
    pl.add_argument("results", nargs="+", help="eval JSON files")
    pl.add_argument("--out", required=True, help="PNG file to write")
    pl.add_argument("--title")

    q = sub.add_parser("quickstart", help="zero vs previous initial state at T=16 on the shipped data, table and plot")
    q.add_argument("--out", default="runs/quickstart", help="output directory")
    q.add_argument("--family", default="mamba", help="model family (mamba, mamba2, s5, gru, lstm)")
    q.add_argument("--steps", type=int, help="training steps per run (default 2000)")
    q.add_argument("--tokenizer", default="byte", help="byte, gpt2 or a tokenizer.json path")
    q.add_argument("--eval-tokens", type=int, default=65536, help="validation tokens evaluated at every length")
    q.add_argument("--max-length", type=int, default=32768, help="longest evaluation length")
    q.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    kwargs = {k: v for k, v in vars(args).items() if k != "command"}
    commands = {"train": train_command, "eval": eval_command, "plot": plot_command, "quickstart": quickstart_command}
    try:
        if args.command == "train":
            kwargs["overrides"] = rest
        commands[args.command](**kwargs)
    except UserError as e:
        print(f"longssm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"longssm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"longssm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
