"""benchmarks/train_memory.py: its --smoke run (the CI smoke test) writes valid JSON of the documented shape."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import train_memory  # noqa: E402


def test_smoke_run_writes_one_peak_per_length(tmp_path):
    out = tmp_path / "memory.json"
    with contextlib.redirect_stdout(io.StringIO()) as stdout, contextlib.redirect_stderr(io.StringIO()):
        train_memory.main(["--smoke", "--family", "s5", "--json", str(out)])
    result = json.loads(out.read_text())
    assert json.loads(stdout.getvalue()) == result
    assert result["device"] == "cpu" and result["config"]["quick"] is True
    assert set(result["train_peak_mb"]) == {"16", "64"}
    for T, peak in result["train_peak_mb"].items():
        assert isinstance(peak, float) and math.isfinite(peak) and peak > 50, (T, peak)  # torch itself is in it
        assert 0 <= result["step_mb"][T] <= peak and result["setup_mb"][T] <= peak
    assert result["model"]["family"] == "s5" and result["model"]["parameters"] > 0
    assert result["ratios"]["train_memory"]["peak_mb_T64/T16"] > 0
