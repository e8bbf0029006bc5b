"""benchmarks/: each script's --quick run prints its documented JSON with figures that make sense; targets,
errors, projections and memory probes are right."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import eval_speed  # noqa: E402
import linear_attention_ops  # noqa: E402
import scan  # noqa: E402
import targets  # noqa: E402
import train_throughput  # noqa: E402
from child_rss import SLACK_MB, kernel_measured, read_log  # noqa: E402

SCRIPTS = {"train_throughput": train_throughput, "eval_speed": eval_speed, "scan": scan,
           "linear_attention_ops": linear_attention_ops}
SMOKE_OPTIONS = {"eval_speed": ["--peers", ""]}  # peers' models run in train_throughput, their evaluation below


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[dict, str]]:
    """{script: (the --json file's object, stdout)} of every script's --quick run.

    eval_speed runs as a command (its children run the script too) while the other two run in this process
    (one torch import less each): the smoke test stays within seconds.
    """
    out = tmp_path_factory.mktemp("bench")

    def argv(name: str) -> list[str]:
        return ["--quick", "--json", str(out / f"{name}.json"), "--targets", str(BENCH / "targets.json"),
                *SMOKE_OPTIONS.get(name, [])]

    command = subprocess.Popen([sys.executable, str(BENCH / "eval_speed.py"), *argv("eval_speed")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    stdouts = {}
    for name in ("train_throughput", "scan", "linear_attention_ops"):
        with contextlib.redirect_stdout(io.StringIO()) as stdout, contextlib.redirect_stderr(io.StringIO()):
            SCRIPTS[name].main(argv(name))
        stdouts[name] = stdout.getvalue()
    stdouts["eval_speed"], stderr = command.communicate(timeout=300)
    assert command.returncode == 0, stderr[-3000:]
    return {name: (json.loads((out / f"{name}.json").read_text()), stdouts[name]) for name in SCRIPTS}


def positive(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_prints_one_json_object_equal_to_its_file(runs, name):
    result, stdout = runs[name]
    assert json.loads(stdout) == result
    assert {"machine", "date", "config", "ratios", "notes", "targets", "wall_seconds"} <= set(result)
    assert {"cpu_model", "logical_cores", "torch", "loadavg_end"} <= set(result["machine"])
    assert result["config"]["quick"] is True and result["config"]["threads"] == 1


@pytest.mark.slow
def test_train_throughput_figures(runs):
    result, _ = runs["train_throughput"]
    train, details = result["train_tokens_per_s"], result["details"]["train"]
    assert set(train) == {"byte", "gpt2"}
    for vocab, per_T in train.items():
        assert list(per_T) == ["T16", "T32"]
        for key, fig in per_T.items():
            assert set(fig) == {"longssm", "mambapy", "transformers"} | ({"floor"} if vocab == "gpt2" else set())
            assert positive(fig["longssm"]) and all(v is None or positive(v) for v in fig.values())
            ran = {impl: d["params"] for impl, d in details[vocab][key].items() if isinstance(d, dict)}
            assert len({p for impl, p in ran.items() if impl != "floor" and not impl.startswith("family:")}) == 1
            ratios = result["ratios"]["train"][vocab][key]
            for impl, v in fig.items():
                if impl != "longssm":
                    assert ratios[f"longssm/{impl}"] == (None if v is None else pytest.approx(fig["longssm"] / v))
    families = result["family_tokens_per_s"]["byte"]
    assert list(families) == ["T16", "T32"]
    for key, fig in families.items():
        assert set(fig) == set(train_throughput.FAMILIES) and all(positive(v) for v in fig.values())
        assert all(f"family:{f}" in details["byte"][key] for f in fig)
        for family, v in fig.items():
            if family != "mamba2":
                assert result["ratios"]["families"]["byte"][key][f"{family}/mamba2"] == pytest.approx(v / fig["mamba2"])


@pytest.mark.slow
def test_linear_attention_ops_figures(runs):
    """Every op at every shape: a time and an error against its float64 reference; ratios are times over the SSD's."""
    result, _ = runs["linear_attention_ops"]
    assert list(result["ops"]) == ["L16xB4", "L40xB1"]
    for key, fig in result["ops"].items():
        for op in linear_attention_ops.OPS:
            assert positive(fig[f"{op}_ms"]) and 0 <= fig[f"{op}_max_rel_err"] < 1e-5
            if op != "ssd":
                assert result["ratios"]["ops"][key][f"{op}/ssd"] == pytest.approx(fig[f"{op}_ms"] / fig["ssd_ms"])
    assert set(result["targets"]) == {"delta_rule_le_ssd", "gated_delta_rule_le_ssd", "ops_max_rel_err_le_1e-5"}
    assert result["targets"]["ops_max_rel_err_le_1e-5"] is True


@pytest.mark.slow
def test_eval_speed_figures(runs, tmp_path, monkeypatch):
    result, _ = runs["eval_speed"]
    ev = result["eval"]
    assert list(ev) == ["L64", "L256"]
    for r in ev.values():
        assert positive(r["tokens_per_s"]) and positive(r["seconds_per_sequence"])
        assert r["rss_after_setup_mb"] <= r["peak_rss_mb"]
    assert [r["chunk"] for r in ev.values()] == [64, 64]
    if sys.platform == "linux":  # the memory figures against the kernel's accounts of processes run here
        log = tmp_path / "maxrss.jsonl"
        imports = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(BENCH)!r}); import eval_speed"]
        subprocess.run(kernel_measured(imports, log), check=True)
        run_child = common.run_child
        monkeypatch.setattr(common, "run_child", lambda argv, timeout: run_child(kernel_measured(argv, log), timeout))
        args = eval_speed.parse_args(["--quick", "--peers", ""])
        again = eval_speed.run_child(("longssm", "ppl_vs_length"), 256, eval_speed.eval_config(args), args)
        (imported_mb, again_mb) = (r["maxrss_mb"] for r in read_log(log))
        # the child reports its peak as the kernel counts it, and the run's L256 child (the same work) peaked there
        assert again["peak_rss_mb"] <= again_mb <= again["peak_rss_mb"] + SLACK_MB, (again, again_mb)
        assert abs(ev["L256"]["peak_rss_mb"] - again_mb) <= SLACK_MB, (ev["L256"], again_mb)
        # every child imports what a process that only imports the benchmark holds, then builds the model
        for r in ev.values():
            assert imported_mb - SLACK_MB <= r["rss_after_setup_mb"], (r, imported_mb)
    assert result["eval_peers"] == {}
    peak = {key: r["peak_rss_mb"] for key, r in ev.items()}
    assert result["ratios"]["eval"]["peak_rss_L256/L64"] == pytest.approx(peak["L256"] / peak["L64"])


@pytest.mark.slow
def test_scan_figures(runs):
    result, _ = runs["scan"]
    figures = result["scan"]
    assert positive(figures["fast_ms"]) and positive(figures["sequential_ms"])
    # every implementation computes the float64 loop's output and gradients to float32 accuracy
    errors = figures["max_rel_err_by_impl"]
    assert errors["fast"] < 1e-5 and errors["sequential"] < 1e-5 and (errors["mambapy_pscan"] or 0) < 1e-5
    assert figures["max_rel_err"] == errors["fast"]
    assert result["ratios"]["scan"]["fast_speedup_vs_sequential"] == pytest.approx(
        figures["sequential_ms"] / figures["fast_ms"])
    assert result["targets"]["scan_max_rel_err_le_1e-5"] is True


def test_eval_workloads_in_process():
    """Every longssm evaluator, and the full-sequence forward that peers run (here the floor's), in this process."""
    spec = {"L": 48, "vocab": 256, "model": {"d_model": 16, "n_layers": 1, "d_state": 4, "expand": 2, "d_conv": 4},
            "chunk": 16, "batch_tokens": 64, "threads": 1, "min_run_time": 0.0}
    for impl, metric in [("longssm", m) for m in eval_speed.WORKLOADS] + [("floor", "ppl_vs_length")]:
        r = eval_speed.child({**spec, "impl": impl, "metric": metric})
        assert positive(r["tokens_per_s"]) and r["chunk"] == (16 if impl == "longssm" else 48), (impl, metric)


def test_targets_from_the_file_on_hand_made_figures():
    result = {
        "ratios": {"train": {"byte": {"T16": {"longssm/mambapy": 3.5, "longssm/transformers": 6.0},
                                      "T256": {"longssm/mambapy": 2.9, "longssm/transformers": 29.0}},
                             "gpt2": {"T16": {"longssm/floor": 0.8}, "T256": {"longssm/floor": None}}}},
    }
    found = targets.check_all(result, targets.load(BENCH / "targets.json", "train_throughput"))
    assert found == {"byte_longssm_ge_3x_mambapy": False,  # 2.9x at T256
                     "byte_longssm_ge_5x_transformers": True,
                     "gpt2_longssm_ge_75pct_floor": None}  # a missing figure: unknown, not guessed
    ev = {"ratios": {"eval": {"peak_rss_L32768/L1024": 1.05, "tokens_per_s_L32768/L1024": 0.85}}}
    found = targets.check_all(ev, targets.load(BENCH / "targets.json", "eval_speed"))
    assert found == {"eval_peak_rss_longest_le_1.1x_shortest": True,
                     "eval_tokens_per_s_longest_within_10pct_of_shortest": False}
    assert targets.check({}, {"figure": "scan.max_rel_err", "max": 1e-5}) is None  # picks nothing


def test_targets_file_rejects_a_target_without_bounds(tmp_path):
    path = tmp_path / "targets.json"
    path.write_text(json.dumps({"scan": {"fast": {"figure": "scan.fast_ms"}}}))
    with pytest.raises(ValueError, match="min"):
        targets.load(path, "scan")


def test_quick_shrinks_only_the_options_left_unset(capsys):
    assert train_throughput.parse_args([]).d_model == 256
    assert train_throughput.parse_args(["--quick"]).d_model == 32
    assert train_throughput.parse_args(["--quick", "--d-model", "8"]).d_model == 8
    assert scan.parse_args(["--quick"]).length == 64
    assert eval_speed.parse_args(["--quick"]).lengths == [64, 256]
    with pytest.raises(SystemExit) as exc:
        eval_speed.parse_args(["--help"])
    assert exc.value.code == 0
    assert "(default 1024,4096,32768; --quick 64,256)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        train_throughput.parse_args(["--vocabs", "byte,klingon"])


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
    assert max(scan.rel_errors(got, ref).values()) < 1e-6
    got[3] = got[3] * 1.01
    errors = scan.rel_errors(got, ref)
    assert errors["dA"] == pytest.approx(0.01, rel=1e-3) and errors["dB"] < 1e-6


def test_peer_projection_skips_what_would_exceed_the_caps():
    args = eval_speed.parse_args(["--peer-mem-cap-mb", "1000", "--peer-time-cap", "10"])
    measured = (1024, {"rss_after_setup_mb": 300.0, "peak_rss_mb": 400.0, "seconds_per_sequence": 0.5})
    assert eval_speed.peer_projection(None, 1024, args) is None
    assert eval_speed.peer_projection(measured, 4096, args) is None  # 300 + 400 MB, 2 s
    assert "RSS" in eval_speed.peer_projection(measured, 32768, args)  # 300 + 3200 MB
    slow = (1024, {**measured[1], "peak_rss_mb": 301.0, "seconds_per_sequence": 4.0})
    assert "per sequence" in eval_speed.peer_projection(slow, 4096, args)  # 16 s
