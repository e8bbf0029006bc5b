"""benchmarks/peers.py: the --smoke run produces the documented JSON; ratios, targets and memory probes are right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import peers  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "peers.py"), "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_smoke_prints_one_json_object_equal_to_the_file(smoke):
    result, stdout = smoke
    assert json.loads(stdout) == result


def test_smoke_has_every_section(smoke):
    result, _ = smoke
    for key in ("machine", "date", "config", "train_tokens_per_s", "eval", "eval_peers", "scan", "ratios",
                "targets", "notes"):
        assert key in result, key
    assert {"cpu_model", "logical_cores", "torch"} <= set(result["machine"])

    train = result["train_tokens_per_s"]
    assert set(train) == {"byte", "gpt2"}
    for vocab, per_T in train.items():
        assert len(per_T) == 2 and all(k.startswith("T") for k in per_T)
        for fig in per_T.values():
            expected = {"longssm", "mambapy", "transformers"} | ({"floor"} if vocab == "gpt2" else set())
            assert set(fig) == expected
            assert fig["longssm"] > 0 and fig.get("floor", 1) > 0
            for peer in ("mambapy", "transformers"):  # a peer is a positive rate, or null when not installed
                assert fig[peer] is None or fig[peer] > 0

    ev = result["eval"]
    assert list(ev) == ["L64", "L128", "L256"]
    for fig in ev.values():
        assert fig["tokens_per_s"] > 0 and fig["peak_rss_mb"] > 0
    for peer, per_L in result["eval_peers"].items():
        assert per_L is None or set(per_L) == set(ev)

    scan = result["scan"]
    for key in ("fast_ms", "sequential_ms", "mambapy_pscan_ms", "max_rel_err"):
        assert key in scan
    assert scan["fast_ms"] > 0 and scan["sequential_ms"] > 0
    # every implementation computes the float64 loop's outputs and gradients to float32 accuracy
    for impl, err in scan["max_rel_err_by_impl"].items():
        assert err is None or err < 1e-5, impl


def test_smoke_ratios_and_targets(smoke):
    result, _ = smoke
    ratios, targets = result["ratios"], result["targets"]
    byte_T16 = result["train_tokens_per_s"]["byte"]["T16"]
    if byte_T16["mambapy"] is not None:
        assert ratios["train"]["byte"]["T16"]["longssm/mambapy"] == pytest.approx(
            byte_T16["longssm"] / byte_T16["mambapy"])
    assert "longssm/floor" in ratios["train"]["gpt2"]["T16"]
    assert ratios["scan"]["fast_speedup_vs_sequential"] == pytest.approx(
        result["scan"]["sequential_ms"] / result["scan"]["fast_ms"])
    assert "peak_rss_L256/L64" in ratios["eval"]
    for name in ("byte_longssm_ge_3x_mambapy", "byte_longssm_ge_5x_transformers", "gpt2_longssm_ge_75pct_floor",
                 "scan_fast_ge_4x_pscan", "scan_fast_ge_4x_sequential", "scan_max_rel_err_le_1e-5",
                 "eval_peak_rss_longest_le_1.1x_shortest", "eval_tokens_per_s_longest_within_10pct_of_shortest"):
        assert targets[name] in (True, False, None), name


def test_targets_from_hand_made_figures():
    result = {
        "train_tokens_per_s": {
            "byte": {"T16": {"longssm": 300.0, "mambapy": 100.0, "transformers": 50.0},
                     "T256": {"longssm": 290.0, "mambapy": 100.0, "transformers": 10.0}},
            "gpt2": {"T16": {"longssm": 80.0, "mambapy": 1.0, "transformers": 1.0, "floor": 100.0},
                     "T256": {"longssm": 70.0, "mambapy": None, "transformers": 1.0, "floor": 100.0}},
        },
        "scan": {"fast_ms": 10.0, "sequential_ms": 50.0, "mambapy_pscan_ms": 30.0, "max_rel_err": 2e-6},
        "eval": {"L1024": {"tokens_per_s": 100.0, "peak_rss_mb": 300.0},
                 "L32768": {"tokens_per_s": 95.0, "peak_rss_mb": 320.0}},
    }
    ratios, targets = peers.ratios_and_targets(result)
    assert targets["byte_longssm_ge_3x_mambapy"] is False  # 2.9x at T256
    assert targets["byte_longssm_ge_5x_transformers"] is True  # 6x and 29x
    assert targets["gpt2_longssm_ge_75pct_floor"] is False  # 70% at T256
    assert ratios["train"]["gpt2"]["T256"]["longssm/mambapy"] is None  # a missing peer gives no ratio
    assert ratios["scan"]["fast_speedup_vs_pscan"] == pytest.approx(3.0)
    assert targets["scan_fast_ge_4x_pscan"] is False and targets["scan_fast_ge_4x_sequential"] is True
    assert targets["scan_max_rel_err_le_1e-5"] is True
    assert ratios["eval"]["peak_rss_L32768/L1024"] == pytest.approx(320 / 300)
    assert targets["eval_peak_rss_longest_le_1.1x_shortest"] is True
    assert targets["eval_tokens_per_s_longest_within_10pct_of_shortest"] is True

    result["train_tokens_per_s"]["byte"]["T16"]["mambapy"] = None
    assert peers.ratios_and_targets(result)[1]["byte_longssm_ge_3x_mambapy"] is None  # unknown, not faked


def test_child_peak_rss_is_its_own_not_the_parents():
    """Linux keeps ru_maxrss across execve; the child's peak must not inherit the parent's 400 MB."""
    ballast = torch.ones(100 * 2**20)  # 400 MB resident in this process
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import common; print(common.peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert common.peak_rss_mb() > 400
    assert child < 200
    del ballast


def test_rel_errors_flags_a_wrong_gradient():
    ref = [torch.randn(3, 4, dtype=torch.float64) for _ in range(6)]
    got = [r.float() for r in ref]
    assert max(peers._rel_errors(got, ref).values()) < 1e-6
    got[3] = got[3] * 1.01
    errors = peers._rel_errors(got, ref)
    assert errors["dA"] == pytest.approx(0.01, rel=1e-3) and errors["dB"] < 1e-6


def test_peer_projection_skips_what_would_exceed_the_caps():
    args = peers.parse_args(["--peer-mem-cap-mb", "1000", "--peer-time-cap", "10"])
    measured = (1024, {"rss_after_setup_mb": 300.0, "peak_rss_mb": 400.0, "seconds_per_sequence": 0.5})
    assert peers._peer_projection(None, 1024, args) is None
    assert peers._peer_projection(measured, 4096, args) is None  # 300 + 400 MB, 2 s
    assert "RSS" in peers._peer_projection(measured, 32768, args)  # 300 + 3200 MB
    slow = (1024, {**measured[1], "peak_rss_mb": 301.0, "seconds_per_sequence": 4.0})
    assert "per sequence" in peers._peer_projection(slow, 4096, args)  # 16 s
