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


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated numbers such as 0,0.5,1; got {text!r}") from None


def eval_command(run: str, data: str | None, lengths: str | None, json_out: str | None, max_tokens: int | None,
                 chunk: int, device: str, no_progress: bool = False, metrics: str | None = None,
                 plots: str | None = None, cache_dir: str | None = None, no_cache: bool = False, state: str = "zero",
                 order: str = "consecutive", seed: int = 0, batch_tokens: int | None = None,
                 position_length: int | None = None, effrem_length: int | None = None, effrem_sequences: int = 8,
                 passkey_lengths: str | None = None, passkey_depths: str | None = None, passkey_trials: int = 4,
                 threads: int | None = None) -> None:
    import torch

    from .evaluate.perplexity import parse_lengths
    from .evaluate.run import evaluate_run, write_outputs

    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be >= 1; got {threads}")
        torch.set_num_threads(threads)

    for flag, value in (("--max-tokens", max_tokens), ("--batch-tokens", batch_tokens), ("--position-length", position_length),
                        ("--effrem-length", effrem_length), ("--effrem-sequences", effrem_sequences),
                        ("--passkey-trials", passkey_trials)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1; got {value}")
    result = evaluate_run(
        run, data, parse_lengths(lengths) if lengths is not None else None, max_tokens, chunk, batch_tokens, device=device,
        progress=not no_progress, metrics=metrics, eval_state=state, order=order, seed=seed, cache_dir=cache_dir,
        use_cache=not no_cache, position_length=position_length, effrem_length=effrem_length,
        effrem_sequences=effrem_sequences,
        passkey_lengths=parse_lengths(passkey_lengths, "--passkey-lengths") if passkey_lengths is not None else None,
        passkey_depths=_floats(passkey_depths, "--passkey-depths"), passkey_trials=passkey_trials,
    )
    print(write_outputs(result, json_out, plots))
    for f in ([json_out, str(Path(json_out).with_suffix(".md"))] if json_out else []) + result.get("plots", []):
        print(f"wrote {f}", file=sys.stderr)


def plot_command(results: list[str], out: str, title: str | None = None) -> None:
    from .evaluate.plots import plot_ppl_vs_length
    from .evaluate.run import load_result

    loaded = [load_result(r) for r in results]
    if not all(r.get("ppl_vs_length") for r in loaded):
        raise UserError("every result needs 'ppl_vs_length' for this plot; use `longssm compare` for the other metrics")
    path = plot_ppl_vs_length(loaded, out, title)
    print(f"wrote {path} and {path.with_suffix('.csv')}")


def compare_command(results: list[str], out: str, data: str | None = None, lengths: str | None = None,
                    max_tokens: int | None = None, device: str = "auto", no_progress: bool = False) -> None:
    from .evaluate.perplexity import parse_lengths
    from .evaluate.run import compare, evaluate_run, load_result

    loaded = []
    for r in results:
        if Path(r).is_dir():  # a run or checkpoint: evaluate ppl_vs_length (cached in <run>/eval_cache)
            loaded.append(evaluate_run(r, data, parse_lengths(lengths) if lengths is not None else None, max_tokens,
                                       device=device, progress=not no_progress))
        else:
            loaded.append(load_result(r))
    summary = compare(loaded, out)
    print(summary["report"])
    for f in summary["plots"] + summary["files"]:
        print(f"wrote {f}", file=sys.stderr)


def quickstart_command(out: str, family: str, steps: int | None, tokenizer: str, eval_tokens: int, max_length: int,
                       no_progress: bool = False, overrides: list[str] | None = None) -> None:
    from .quickstart import quickstart

    quickstart(out, family, steps, tokenizer, eval_tokens, max_length, overrides=overrides, progress=not no_progress)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longssm", description="Train recurrent LMs on short windows, run them on unbounded context.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (config YAML + dotted overrides such as --train.lr 1e-3)")
    t.add_argument("--config", help="YAML config (see configs/)")
    t.add_argument("--run-dir", help="run directory (default runs/<name>)")
    t.add_argument("--resume", help="'auto' (newest complete checkpoint of the run directory) or a checkpoint path")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="evaluate a run or checkpoint: perplexity vs length and more",
                       description="Length-extension metrics as an exact chunked recurrence (memory flat in L), "
                                   "cached per (checkpoint, data, metric, L) in <run>/eval_cache.")
    e.add_argument("run", help="run directory or checkpoint directory")
    e.add_argument("--data", help="text or .npy token file (default: the run's validation file)")
    e.add_argument("--metrics", help="comma-separated: ppl_vs_length,position_ppl,effective_remembrance,passkey,"
                                     "state_stats, or 'all' (default ppl_vs_length)")
    e.add_argument("--lengths", help="comma-separated evaluation lengths (default 16,32,...,32768, up to what the data holds)")
    e.add_argument("--json", dest="json_out", help="write results JSON here (and a .md report beside it)")
    e.add_argument("--plots", help="write PNG plots (with CSV data beside them) into this directory")
    e.add_argument("--max-tokens", type=int, help="use at most this many evaluation tokens per length")
    e.add_argument("--chunk", type=int, default=1024, help="tokens per chunk of the chunked recurrence")
    e.add_argument("--batch-tokens", type=int, help="rows x chunk tokens per forward call (default from the vocabulary)")
    e.add_argument("--state", "--eval.state", dest="state", default="zero", choices=["zero", "previous"],
                   help="initial state of each evaluation sequence for ppl_vs_length: zero (default) or the previous "
                        "sequence's final state")
    e.add_argument("--order", default="consecutive", choices=["consecutive", "shuffled"],
                   help="sequence order within the carried-state streams (with --state previous)")
    e.add_argument("--seed", type=int, default=0, help="seed of the shuffled order and the passkeys")
    e.add_argument("--position-length", type=int, help="L of position_ppl and state_stats (default: the longest length)")
    e.add_argument("--effrem-length", type=int, help="context T of effective_remembrance (default min(longest, 2048))")
    e.add_argument("--effrem-sequences", type=int, default=8, help="sequences averaged by effective_remembrance")
    e.add_argument("--passkey-lengths", help="comma-separated passkey context lengths (default: the lengths in [min, 8192])")
    e.add_argument("--passkey-depths", help="comma-separated needle depths in [0, 1] (default 0,0.25,0.5,0.75,1)")
    e.add_argument("--passkey-trials", type=int, default=4, help="random keys per (length, depth) cell")
    e.add_argument("--cache-dir", help="evaluation cache directory (default <run>/eval_cache)")
    e.add_argument("--no-cache", action="store_true", help="neither read nor write the evaluation cache")
    e.add_argument("--device", default="auto")
    e.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is fastest on a busy machine)")
    e.add_argument("--no-progress", action="store_true")

    pl = sub.add_parser("plot", help="plot perplexity vs length of one or more eval JSON files")
    pl.add_argument("results", nargs="+", help="eval JSON files")
    pl.add_argument("--out", required=True, help="PNG file to write")
    pl.add_argument("--title")

    c = sub.add_parser("compare", help="overlay several runs: every metric's plot, the sweep heatmap and verdicts")
    c.add_argument("results", nargs="+", help="eval JSON files (or run directories: ppl_vs_length is evaluated)")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--data", help="data for run directories (default: each run's validation file)")
    c.add_argument("--lengths", help="evaluation lengths for run directories")
    c.add_argument("--max-tokens", type=int, help="evaluation tokens per length for run directories")
    c.add_argument("--device", default="auto")
    c.add_argument("--no-progress", action="store_true")

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
    if rest and args.command not in ("train", "quickstart"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    kwargs = {k: v for k, v in vars(args).items() if k != "command"}
    commands = {"train": train_command, "eval": eval_command, "plot": plot_command, "compare": compare_command,
                "quickstart": quickstart_command}
    try:
        if args.command in ("train", "quickstart"):
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
