"""What every benchmark script shares: its command line, timing, machine description, peak memory, child
processes, and the JSON object it prints.

Timing: ``torch.utils.benchmark.Timer(...).blocked_autorange`` warms up, picks how many calls make one timed
block, sets the torch threads and synchronises an accelerator; a figure is the median time per call over at
least ``--min-run-time`` seconds of timed blocks (at least one block).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import targets

MODEL_SIZES = {"d_model": (256, 32), "n_layers": (4, 1), "d_state": (16, 4), "expand": (2, 2), "d_conv": (4, 4)}
"""The Mamba-1 model every implementation runs: option -> (default, --quick default)."""


# ----------------------------------------------------------------------------------------------------------
# Command line.


def int_list(text: str) -> list[int]:
    """``"64,256"`` -> [64, 256]."""
    return [int(x) for x in text.split(",") if x.strip()]


def choice_list(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """An option type: comma-separated names, each one of ``choices`` ("" for none)."""
    allowed = list(choices)

    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        if any(name not in allowed for name in names):
            raise argparse.ArgumentTypeError(f"comma-separated names from {','.join(allowed)}; got {text!r}")
        return names

    return parse


def shape_pairs(what: str, example: str) -> Callable[[str], list[tuple[int, int]]]:
    """An option type: comma-separated ``AxB`` pairs of positive integers, e.g. ``"16x64,256x8"`` -> [(16, 64),
    (256, 8)]; ``what`` and ``example`` name them in the error."""

    def parse(text: str) -> list[tuple[int, int]]:
        try:
            pairs = [tuple(int(x) for x in item.split("x")) for item in text.split(",") if item.strip()]
        except ValueError:
            pairs = []
        if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
            raise argparse.ArgumentTypeError(f"comma-separated {what} shapes such as {example}; got {text!r}")
        return pairs  # type: ignore[return-value]

    return parse


def _shown(value: Any) -> str:
    """A default as it is typed: lists comma-separated, pairs joined by x."""
    if isinstance(value, list):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return str(value)


class BenchParser(argparse.ArgumentParser):
    """The options of every benchmark, and sized options whose default ``--quick`` replaces by a tiny one."""

    def __init__(self, doc: str) -> None:
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        self._sized: dict[str, tuple[Any, Any]] = {}
        self.add_argument("--json", type=Path, help="also write the JSON object to this file")
        self.add_argument("--quick", action="store_true",
                          help="tiny shapes, the shortest timing: checks that the script runs (the smoke test)")
        self.add_argument("--targets", type=Path,
                          help="compare the figures with the targets in this file (e.g. benchmarks/targets.json)")
        self.add_sized("--threads", 2, 1, type=int, help="torch threads, in this process and every child")
        self.add_sized("--min-run-time", 5.0, 0.0, type=float,
                       help="timed seconds per figure, after blocked_autorange's warm-up")

    def add_sized(self, flag: str, full: Any, quick: Any, help: str, **kwargs: Any) -> None:
        """An option whose default is ``full``, or ``quick`` with --quick."""
        action = self.add_argument(flag, default=None, help=f"{help} (default {_shown(full)}; --quick {_shown(quick)})",
                                   **kwargs)
        self._sized[action.dest] = (full, quick)

    def add_names(self, flag: str, choices: Iterable[str], help: str, default: list[str] | None = None) -> None:
        """An option of comma-separated names from ``choices``; by default all of them."""
        names = list(choices)
        default = names if default is None else default
        self.add_argument(flag, type=choice_list(names), default=default,
                          help=f"{help}, comma-separated from {','.join(names)} (default {','.join(default)})")

    def add_model_options(self) -> None:
        """--d-model, --n-layers, --d-state, --expand, --d-conv of the Mamba-1 model (see ``model_dims``)."""
        for name, (full, quick) in MODEL_SIZES.items():
            self.add_sized("--" + name.replace("_", "-"), full, quick, type=int, help=f"{name} of the Mamba-1 model")

    def parse_args(self, args: list[str] | None = None,  # type: ignore[override]
                   namespace: Any = None) -> argparse.Namespace:
        """Parse, then give every sized option left unset its default, or its --quick default."""
        parsed = super().parse_args(args, namespace)
        for dest, (full, quick) in self._sized.items():
            if getattr(parsed, dest) is None:
                setattr(parsed, dest, quick if parsed.quick else full)
        return parsed


def model_dims(args: argparse.Namespace) -> dict[str, int]:
    """{"d_model": ..., "n_layers": ..., "d_state": ..., "expand": ..., "d_conv": ...} from the model options."""
    return {name: getattr(args, name) for name in MODEL_SIZES}


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    """The model as the result's ``config.model`` records it."""
    return {"family": "mamba", **model_dims(args), "dtype": "float32"}


# ----------------------------------------------------------------------------------------------------------
# Measuring.


@dataclass
class Timing:
    """One figure of ``time_call``."""

    seconds: float
    """Median seconds per call."""
    repeats: int
    """Timed blocks."""
    calls_per_block: int
    """Calls in each timed block."""

    def rate(self, units_per_call: int) -> float:
        """Units (tokens) per second."""
        return units_per_call / self.seconds


def time_call(call: Callable[[], object], threads: int, min_run_time: float) -> Timing:
    """Time ``call()`` with ``torch.utils.benchmark`` at ``threads`` torch threads, ``min_run_time`` s timed."""
    from torch.utils import benchmark

    timer = benchmark.Timer("call()", globals={"call": call}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return Timing(seconds=m.median, repeats=len(m.raw_times), calls_per_block=m.number_per_run)


def set_threads(n: int) -> None:
    """torch intra-op threads, and the OpenMP/MKL variables that every child process inherits."""
    import torch

    torch.set_num_threads(n)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB.

    Linux: ``VmHWM`` of /proc/self/status, which starts afresh at ``execve``. Not ``ru_maxrss``: Linux carries
    that over ``execve`` from the forked parent, so a child would report its parent's peak when that is larger.
    Elsewhere: ``ru_maxrss`` (KB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_child(argv: list[str], timeout: float) -> dict[str, Any] | str:
    """Run a child process that prints one JSON object as its last stdout line.

    Returns the parsed object, or a string "skipped: <reason>" (timeout, crash, no JSON).
    """
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"skipped: timed out after {timeout:.0f} s"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if proc.returncode < 0:
            tail = f"killed by signal {-proc.returncode} ({tail})"
        return f"skipped: child failed with exit code {proc.returncode}: {tail[:300]}"
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return f"skipped: child printed no JSON: {lines[-1][:300]}"


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing (never guessed)."""
    return a / b if a is not None and b is not None and b > 0 else None


def progress(label: str, figures: dict[str, Any]) -> None:
    """One line on stderr (stdout carries the JSON): ``label``, then each figure, numbers to 3 digits."""
    shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
    print(f"[bench] {label}: {shown}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# The JSON object.


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, cores, versions and load average: what a figure must be read with."""
    import torch

    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _package_version("transformers"),
        "mambapy": _package_version("mambapy"),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def report(args: argparse.Namespace, script: str, config: dict[str, Any],
           measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``measure()`` (figures, ratios, notes, details) and print the whole JSON object; --json writes it too.

    The object: machine, date, config, what ``measure`` returns, targets (with --targets: the ``script``
    section of that file checked against the figures) and wall_seconds.
    """
    set_threads(args.threads)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": machine_info(args.threads),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {"quick": args.quick, "threads": args.threads, "min_run_time": args.min_run_time, **config},
    }
    result.update(measure())
    if args.targets:
        result["targets"] = targets.check_all(result, targets.load(args.targets, script))
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    return result
