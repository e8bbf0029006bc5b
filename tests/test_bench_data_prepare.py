"""benchmarks/data_prepare.py: a --quick run on byte-level corpora of 1 and 2 MB prints its documented JSON, with
token counts that match the corpus and memory ratios computed from the two sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_quick_run_on_byte_corpora(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(BENCH / "data_prepare.py"), "--quick", "--tokenizers", "byte",
                           "--sizes-mb", "1,2", "--train-steps", "2", "--json", str(out), "--targets",
                           str(BENCH / "targets.json")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result
    for size, mb in (("1MB", 1), ("2MB", 2)):
        prep, loader = result["prepare"]["byte"][size], result["loader"]["byte"][size]
        # bytes + one EOS per document: the token count is the text's size plus its documents
        assert prep["tokens"] == round(prep["input_mb"] * 1e6) + prep["documents"] and abs(prep["input_mb"] - mb) < 0.01
        assert loader["tokens"] == prep["tokens"] and loader["documents"] == prep["documents"]
        assert prep["mb_per_s"] > 0 and loader["build_seconds"] > 0 and loader["train_peak_rss_mb"] > 0
    memory = result["ratios"]["memory"]["byte"]
    assert set(memory) == {"prepare_peak_rss_2MB/1MB", "train_peak_rss_2MB/1MB", "loader_build_peak_rss_2MB/1MB"}
    assert all(v > 0 for v in memory.values()) and result["bare"] == {}
    assert set(result["targets"]) == set(json.loads((BENCH / "targets.json").read_text())["data_prepare"])
