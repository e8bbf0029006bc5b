"""Helpers shared by the benchmark scripts: timing, machine description, peak memory, fresh-subprocess runs.

Timing protocol (every figure): ``warmup`` untimed calls, one calibration call that fixes how many calls make
one timed run (at least ``min_seconds`` long, so fast steps are not timed one by one), then ``repeats`` timed
runs; the figure is the median rate. A measurement whose calls are slow is given fewer repeats so that it fits
``time_cap`` seconds; the repeats actually used are recorded beside the figure.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def set_threads(n: int) -> None:
    """torch intra-op threads (and the OpenMP/MKL variables for any child process)."""
    import torch

    torch.set_num_threads(n)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict[str, Any]:
    import torch

    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "mambapy": package_version("mambapy"),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB.

    Linux: ``VmHWM`` of /proc/self/status, which starts afresh at ``execve``. Not ``ru_maxrss``: Linux carries
    that over ``execve`` from the forked parent, so a child would report its parent's peak when that is larger.
    Elsewhere: ``ru_maxrss`` (KB on Linux, bytes on macOS).
    """
    hwm = _status_field("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _status_field(name: str) -> float | None:
    """A memory field of /proc/self/status (kB there), in MB; None where there is no /proc."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mb() -> float | None:
    """Current resident set size, MB (Linux only; None elsewhere)."""
    return _status_field("VmRSS")


def measure(
    call: Callable[[], Any], units_per_call: int, repeats: int, warmup: int, min_seconds: float, time_cap: float
) -> dict[str, Any]:
    """Median rate (units per second) of ``call`` over timed runs; see the module docstring for the protocol.

    Returns {"rate": median units/s, "ms_per_call": median ms per call, "runs": [units/s per run],
    "calls_per_run": int, "repeats": int}.
    """
    for _ in range(warmup):
        call()
    t0 = time.perf_counter()
    call()
    one = max(time.perf_counter() - t0, 1e-9)
    calls = max(1, math.ceil(min_seconds / one))
    repeats = max(1, min(repeats, int(time_cap // (one * calls))))
    rates, per_call = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        elapsed = time.perf_counter() - t0
        rates.append(units_per_call * calls / elapsed)
        per_call.append(1000 * elapsed / calls)
    return {
        "rate": statistics.median(rates),
        "ms_per_call": statistics.median(per_call),
        "runs": rates,
        "calls_per_run": calls,
        "repeats": repeats,
    }


def run_child(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any] | str:
    """Run a benchmark child process that prints one JSON object as its last stdout line.

    Returns the parsed object, or a string "skipped: <reason>" (timeout, crash, no JSON).
    """
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )
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
