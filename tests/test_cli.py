"""The command line end to end, and bad input: one-line error, non-zero exit, no traceback."""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error, longssm, tiny_train_args
from longssm.config import EvalConfig
from longssm.evaluate.run import evaluate_run


def test_train_eval_plot_end_to_end(tmp_path, corpus_file):
    run = tmp_path / "run"
    proc = longssm(*tiny_train_args(corpus_file, tmp_path / "cache", run, "--state.scheme", "previous"))
    assert proc.returncode == 0, proc.stderr
    assert (run / "final" / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6 and "tokens_per_s" in records[-1] and "state_max_abs" in records[-1]
    out = tmp_path / "eval.json"
    proc = longssm("eval", str(run), "--data", str(corpus_file), "--lengths", "8,32,128", "--json", str(out),
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result["ppl_vs_length"]) == {"8", "32", "128"}
    assert result["train_seq_len"] == 8 and result["scheme"] == "previous" and result["family"] == "mamba"
    # the command line computes exactly what the Python API computes with the same settings
    api = evaluate_run(run, EvalConfig(data=str(corpus_file), lengths=[8, 32, 128], use_cache=False), progress=False)
    assert result["ppl_vs_length"] == pytest.approx(api["ppl_vs_length"], rel=1e-9)
    assert "| 8 | 32 | 128 |" in proc.stdout.replace("run | ", "")
    png = tmp_path / "fig.png"
    proc = longssm("plot", str(out), str(out), "--out", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.with_suffix(".csv").is_file()


def test_missing_data_file(tmp_path, corpus_file):
    proc = longssm(*tiny_train_args(tmp_path / "nope.txt", tmp_path / "cache", tmp_path / "run"))
    assert_one_line_error(proc, "not found")


def test_empty_data_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = longssm(*tiny_train_args(empty, tmp_path / "cache", tmp_path / "run"))
    assert_one_line_error(proc, "empty")


def test_corpus_too_short_for_the_streams(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("just a few bytes of text\n")
    proc = longssm(*tiny_train_args(short, tmp_path / "cache", tmp_path / "run"))
    assert_one_line_error(proc, "corpus too short")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model.nonsense", "3"], "unknown config key 'model.nonsense'"),
        (["--train.steps", "many"], "train.steps must be an integer"),
        (["--state.scheme", "magic"], "state.scheme must be one of"),
        (["--model.family", "transformer"], "model.family must be one of"),
        (["--config", "no-such.yaml"], "config file not found"),
        (["--train.lr"], "--train.lr needs a value"),
        (["--train.seq_len", "0"], "train.seq_len must be >= 1; got 0"),
        (["--train.dtype", "float8"], "train.dtype must be one of float32, bfloat16, float16"),
        (["foo.yaml"], "(a config file is given as --config foo.yaml)"),
    ],
)
def test_bad_config(tmp_path, corpus_file, args, needle):
    proc = longssm(*tiny_train_args(corpus_file, tmp_path / "cache", tmp_path / "run"), *args)
    assert_one_line_error(proc, needle)


def test_unknown_key_in_yaml(tmp_path, corpus_file):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  stepz: 3\n")
    proc = longssm(*tiny_train_args(corpus_file, tmp_path / "cache", tmp_path / "run"), "--config", str(cfg))
    assert_one_line_error(proc, "unknown config key 'train.stepz'")


@pytest.mark.parametrize("lengths", ["abc", "16,-4", "0", ""])
def test_bad_length_list(tmp_path, corpus_file, lengths):
    run = tmp_path / "run"
    assert longssm(*tiny_train_args(corpus_file, tmp_path / "cache", run)).returncode == 0
    proc = longssm("eval", str(run), "--lengths", lengths, "--no-progress")
    assert_one_line_error(proc, "--lengths")


def test_eval_of_a_missing_run():
    assert_one_line_error(longssm("eval", "/no/such/run"), "no such run")


def test_help_lists_every_config_key_with_default_and_doc():
    from longssm.cli_parsing import field_types
    from longssm.config import RunConfig

    proc = longssm("train", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for key in field_types(RunConfig):
        assert f"--{key}" in text, key
    assert "Window length T (truncated-BPTT length)" in text and "default: 16" in text


def test_print_config_prints_the_resolved_yaml(tmp_path):
    import yaml

    proc = longssm("train", "--config", "mamba_tiny", "--train.lr", "0.004", "--print_config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["train"]["lr"] == 0.004 and printed["model"]["family"] == "mamba"
    assert not (tmp_path / "runs").exists()  # printing trains nothing


def test_eval_help_shows_the_eval_config():
    proc = longssm("eval", "--help")
    assert proc.returncode == 0
    for flag in ("--lengths", "--metrics", "--chunk", "--passkey_depths", "--json_out", "--state"):
        assert flag in proc.stdout, flag
