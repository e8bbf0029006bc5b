"""``longssm sweep``: a 2×2 grid end to end, a rerun that trains nothing, a killed cell that resumes from its
checkpoint, and one-line errors for bad grids."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from child_rss import SLACK_MB, kernel_measured, read_log
from conftest import tiny_overrides
from longssm import sweep as sweep_module
from longssm.cli import main, option_table
from longssm.config import EvalConfig
from longssm.sweep import parse_grid

EVAL = EvalConfig(lengths=[8, 32, 128], max_tokens=2000)


def write_config(tmp_path: Path, corpus: Path, **extra) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_overrides(corpus, tmp_path / "cache", **extra)))
    return path


def measure_training_children(monkeypatch, log: Path) -> None:
    """Run every cell's training child (``python -m longssm.sweep CELL_DIR``) through ``kernel_measured``."""
    run = subprocess.run

    def measured_run(argv, *args, **kwargs):
        if list(argv[:3]) == [sys.executable, "-m", "longssm.sweep"]:
            argv = kernel_measured(list(argv), log)
        return run(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", measured_run)


@pytest.mark.slow
def test_two_by_two_sweep_then_a_rerun_that_trains_nothing(tmp_path, corpus_file, monkeypatch):
    config, out = write_config(tmp_path, corpus_file), tmp_path / "sweep"
    grid = ["train.seq_len=8,16", "state.scheme=zero,previous"]
    log = tmp_path / "maxrss.jsonl"
    with monkeypatch.context() as patch:
        measure_training_children(patch, log)
        started = time.perf_counter()
        summary = sweep_module.sweep(str(config), grid, out, EVAL, overrides=["--train.steps", "6"], progress=False)
        sweep_seconds = time.perf_counter() - started
    kernel_mb = {Path(r["argv"][-1]).name: r["maxrss_mb"] for r in read_log(log)}  # cell -> its child's peak

    rows = summary["rows"]
    assert [tuple(r["values"].values()) for r in rows] == [(8, "zero"), (8, "previous"), (16, "zero"), (16, "previous")]
    assert set(kernel_mb) == {r["cell"] for r in rows}, kernel_mb  # one training child per cell, each measured
    assert sum(r["train_seconds"] for r in rows) < sweep_seconds  # each child's training time is within the sweep's
    for row in rows:
        assert set(row["ppl_vs_length"]) == {"8", "32", "128"} and row["verdict"] in ("strong", "weak", "none")
        assert row["train_seconds"] > 0 and not row["failed"] and row["memory"] == "process_peak_rss"
        # the peak RSS the child reported of itself is the one the kernel counted for that process
        assert row["train_peak_mb"] <= kernel_mb[row["cell"]] <= row["train_peak_mb"] + SLACK_MB, row
        cell = out / "cells" / row["cell"]
        assert (cell / "final" / "model.safetensors").is_file() and (cell / "metrics.jsonl").is_file()
    table = (out / "results.md").read_text()
    assert "| train.seq_len | state.scheme | 8 | 32 | 128 | verdict | train min | peak train MB |" in table
    summary_json = json.loads((out / "results.json").read_text())
    assert summary_json["grid_keys"] == ["train.seq_len", "state.scheme"]
    (match,) = summary_json["zero_state_matches"]  # zero vs previous at T=8: the join of LongSSM Fig. 6
    assert match["family"] == "mamba" and match["previous_T"] == 8 and match["length"] == 128
    assert match["text"] in table
    for png in ("ppl_vs_length.png", "heatmap_zero.png", "heatmap_previous.png", "training.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(sweep_module, "train_cell", no_training)
    sweep_module.sweep(str(config), grid, out, EVAL, overrides=["--train.steps", "6"], progress=False)
    assert (out / "results.md").read_text() == table
    # the same cells under a grid with one more key (at the config's value) are found, not trained again
    sweep_module.sweep(str(config), [*grid, "model.d_model=16"], out, EVAL, overrides=["--train.steps", "6"],
                       progress=False)
    assert len(list((out / "cells").iterdir())) == 4


@pytest.mark.slow
def test_a_killed_cell_resumes_from_its_checkpoint(tmp_path, corpus_file):
    config = write_config(tmp_path, corpus_file, train__steps=300, train__checkpoint_every=10, train__log_every=10)
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "longssm", "sweep", "--config", str(config), "--grid", "train.seq_len=8",
               "--out", str(out), "--lengths", "8,32", "--eval-tokens", "2000", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("cells/*/checkpoints/step-*/meta.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the sweep and its training child, mid-run
    first.communicate()
    (cell,) = (out / "cells").iterdir()
    assert not (cell / "final").exists()

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"resuming {cell.name} from step-" in second.stderr
    assert "resumed from" in second.stderr  # train() itself picked the checkpoint up
    assert json.loads((cell / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 300
    assert "| 8 |" in (out / "results.md").read_text()


@pytest.mark.parametrize("args, message", [
    ([], "the grid is empty"),
    (["--grid", "train.seq_len"], "--grid must be KEY=V1,V2,..."),
    (["--grid", "train.seq_len="], "--grid train.seq_len has no values"),
    (["--grid", "train.seqlen=8,16"], "unknown config key 'train.seqlen' (did you mean train.seq_len?)"),
    (["--grid", "train.seq_len=8,fast"], "train.seq_len must be an integer; got 'fast'"),
    (["--grid", "state.scheme=zero,sometimes"], "state.scheme must be one of"),
    (["--grid", "train.lr=1e-3", "--grid", "train.lr=2e-3"], "--grid train.lr is given twice"),
])
def test_bad_grids_are_one_line_errors(tmp_path, corpus_file, capsys, args, message):
    config = write_config(tmp_path, corpus_file)
    code = main(["sweep", "--config", str(config), "--out", str(tmp_path / "sweep"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "sweep" / "cells").exists()  # nothing trained


def test_the_corpus_is_tokenized_once_before_any_cell_and_a_missing_one_fails_first(tmp_path, corpus_file, capsys):
    cache = tmp_path / "cache"
    cells = sweep_module.plan_cells(str(write_config(tmp_path, corpus_file)), None,
                                    {"train.seq_len": ["8", "16"]}, tmp_path / "sweep")
    sweep_module.tokenize_once(cells, progress=False)
    (entry,) = cache.iterdir()  # both cells read the same file with the same tokenizer: one cache entry
    assert (entry / "manifest.json").is_file()

    config = write_config(tmp_path, tmp_path / "missing.txt")
    code = main(["sweep", "--config", str(config), "--out", str(tmp_path / "bad"), "--grid", "train.seq_len=8,16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "data file not found" in err[0], err
    assert not (tmp_path / "bad").exists()  # nothing trained, nothing written


def test_sweep_arguments_are_sorted_into_options_grid_and_overrides():
    parsed = option_table("sweep").parse(["--config", "configs/a.yaml", "--grid", "train.seq_len=16,64", "--out",
                                          "runs/x.1", "--model.d_model", "64", "--grid=state.scheme=zero,previous",
                                          "--no-progress", "train.lr=1e-3"])
    assert parsed.params == {"config_file": "configs/a.yaml", "out": "runs/x.1", "progress": False,
                             "grid": ["train.seq_len=16,64", "state.scheme=zero,previous"]}
    assert parsed.config == {"model.d_model": 64, "train.lr": 1e-3}
    assert parse_grid(["train.seq_len=16, 64", "state.scheme=zero"]) == {"train.seq_len": ["16", "64"],
                                                                        "state.scheme": ["zero"]}


def test_rows_sort_numbers_by_value_whichever_command_added_them():
    from longssm.sweep import _sort_key

    seq_lens = [1024, 16, 256, 64]  # cells of two commands; the second one's grid was train.seq_len=1024
    assert sorted(seq_lens, key=lambda v: _sort_key(v, ["1024"])) == [16, 64, 256, 1024]
    schemes = ["zero", "state_passing", "previous"]  # text: this command's order, then the others
    assert sorted(schemes, key=lambda v: _sort_key(v, ["previous", "zero"])) == ["previous", "zero", "state_passing"]


@pytest.mark.slow
def test_two_seeds_give_mean_and_interval_tables_a_banded_plot_and_verdicts_over_seeds(tmp_path, corpus_file):
    from longssm.stats import t_interval

    config, out = write_config(tmp_path, corpus_file), tmp_path / "seeds"
    summary = sweep_module.sweep(str(config), ["state.scheme=zero,previous"], out, EVAL,
                                 overrides=["--train.steps", "4"], progress=False, seeds=2)
    rows = summary["rows"]
    assert sorted((r["values"]["state.scheme"], r["values"]["train.seed"]) for r in rows) == [
        ("previous", 0), ("previous", 1), ("zero", 0), ("zero", 1)]  # one trained cell per (scheme, seed)
    data = json.loads((out / "results.json").read_text())
    merged = {r["values"]["state.scheme"]: r for r in data["seed_rows"]}
    assert set(merged) == {"zero", "previous"} and merged["zero"]["seeds"] == [0, 1]
    for scheme, row in merged.items():
        for L in ("8", "32", "128"):
            per_seed = [r["ppl_vs_length"][L] for r in rows if r["values"]["state.scheme"] == scheme]
            assert row["ppl_seeds"][L] == per_seed
            expected = t_interval(per_seed)
            assert row["ppl_ci"][L]["mean"] == pytest.approx(expected["mean"])
            assert row["ppl_ci"][L]["half_width"] == pytest.approx(expected["half_width"])
    table = (out / "results.md").read_text()
    assert "| state.scheme | seeds | 8 | 32 | 128 |" in table and "Every seed:" in table
    zero = merged["zero"]["ppl_ci"]["128"]
    assert f"{zero['mean']:.3f} ± {zero['half_width']:.3f}" in table
    (match,) = data["zero_state_matches"]
    assert match["difference"]["rule"] == "t over 2 seeds" and match["text"] in table
    assert (out / "ppl_vs_length.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0", "--grid", "state.scheme=zero"], "--seeds must be >= 1; got 0"),
    (["--seeds", "2", "--grid", "train.seed=1,2"],
     "--seeds 2 (or train.seeds) and --grid train.seed both set the seeds"),
])
def test_bad_seed_options_are_one_line_errors(tmp_path, corpus_file, capsys, args, message):
    config = write_config(tmp_path, corpus_file)
    code = main(["sweep", "--config", str(config), "--out", str(tmp_path / "sweep"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "sweep").exists()


def test_seeds_come_from_the_config_and_do_not_change_a_cells_digest(tmp_path, corpus_file):
    from longssm.paths import shipped_configs
    from longssm.sweep import config_digest, plan_cells, with_seeds

    cfg = tiny_overrides(corpus_file, tmp_path / "cache", train__seeds=2, train__seed=5)
    axes = with_seeds({"state.scheme": ["zero"]}, None, cfg, None)
    assert axes["train.seed"] == ["5", "6"]  # the config's seed and the one after it
    assert with_seeds({"state.scheme": ["zero"]}, 1, cfg, None) == {"state.scheme": ["zero"]}  # --seeds 1 wins
    one, two = (plan_cells(dict(cfg, train=dict(cfg["train"], seeds=k)), None, {"state.scheme": ["zero"]},
                           tmp_path / "s")[0].config for k in (1, 2))
    assert config_digest(one) == config_digest(two)  # train.seeds is how many cells, not what one cell computes
    paper = [path for name, path in shipped_configs().items() if name.endswith(("_cpu", "_paper"))]
    assert len(paper) >= 18
    for path in paper:  # every paper config declares its seeds
        assert yaml.safe_load(path.read_text())["train"]["seeds"] >= 3, path.name
