"""The command line end to end, and bad input: one-line error, non-zero exit, no traceback."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest

from conftest import REPO, ForkedCli, assert_one_line_error, file_hashes, longssm, tiny_train_args, tiny_workdir
from longssm.cli import COMMANDS, main, option_table
from longssm.cli_options import value_text
from longssm.config import EvalConfig, RunConfig, from_dict, leaf_fields, literal_choices, load_config, strip_optional
from longssm.errors import UserError
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


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """The bad-input cases' command line: ``python -m longssm`` forked from a server that imported torch once (the
    end-to-end test above and the help tests below start a fresh interpreter each)."""
    forked = ForkedCli(tmp_path_factory.mktemp("cli"))
    yield forked
    forked.close()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, wiki_text) -> Path:
    """A finished tiny 6-step run, trained once for the tests that only evaluate it."""
    root = tiny_workdir(tmp_path_factory, wiki_text, "cli_run")
    proc = longssm(*tiny_train_args(root / "corpus.txt", root / "cache", root / "run"))
    assert proc.returncode == 0, proc.stderr
    return root / "run"


def test_missing_data_file(tmp_path, corpus_file, cli):
    proc = cli(*tiny_train_args(tmp_path / "nope.txt", tmp_path / "cache", tmp_path / "run"))
    assert_one_line_error(proc, "not found")


def test_empty_data_file(tmp_path, cli):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = cli(*tiny_train_args(empty, tmp_path / "cache", tmp_path / "run"))
    assert_one_line_error(proc, "empty")


def test_corpus_too_short_for_the_streams(tmp_path, cli):
    short = tmp_path / "short.txt"
    short.write_text("just a few bytes of text\n")
    proc = cli(*tiny_train_args(short, tmp_path / "cache", tmp_path / "run"))
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
def test_bad_config(tmp_path, corpus_file, cli, args, needle):
    proc = cli(*tiny_train_args(corpus_file, tmp_path / "cache", tmp_path / "run"), *args)
    assert_one_line_error(proc, needle)


def test_unknown_key_in_yaml(tmp_path, corpus_file, cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  stepz: 3\n")
    proc = cli(*tiny_train_args(corpus_file, tmp_path / "cache", tmp_path / "run"), "--config", str(cfg))
    assert_one_line_error(proc, "unknown config key 'train.stepz'")


@pytest.mark.parametrize("lengths", ["abc", "16,-4", "0", ""])
def test_bad_length_list(finished_run, cli, lengths):
    before = file_hashes(finished_run)
    proc = cli("eval", str(finished_run), "--lengths", lengths, "--no-progress")
    assert_one_line_error(proc, "--lengths")
    assert file_hashes(finished_run) == before  # the refused evaluation wrote nothing into the run


def test_eval_of_a_missing_run(cli):
    assert_one_line_error(cli("eval", "/no/such/run"), "no such run")


def test_help_lists_every_config_key_with_default_and_doc():
    proc = longssm("train", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for info in leaf_fields(RunConfig):
        assert f"--{info.key}" in text, info.key
    assert "Window length T (truncated-BPTT length)" in text and "default: 16" in text
    assert "--no-progress" in text and "--print-config" in text


def test_print_config_prints_the_resolved_yaml(tmp_path):
    import yaml

    proc = longssm("train", "--config", "mamba_tiny", "--train.lr", "0.004", "--print-config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["train"]["lr"] == 0.004 and printed["model"]["family"] == "mamba"
    assert not (tmp_path / "runs").exists()  # printing trains nothing
    from longssm.data.tokenizer import load_tokenizer
    from longssm.train.setup import resolve_config

    expected = resolve_config(load_config("mamba_tiny", ["--train.lr", "0.004"]), load_tokenizer("byte"))
    assert from_dict(RunConfig, printed) == expected  # a valid --config, resolved as the run's config.yaml holds it
    assert printed["model"]["vocab_size"] == 256


def test_eval_help_shows_the_eval_config():
    proc = longssm("eval", "--help")
    assert proc.returncode == 0
    for flag in ("--lengths", "--metrics", "--chunk", "--passkey-depths", "--json", "--state", "--max-tokens",
                 "--no-cache", "--no-progress"):
        assert flag in proc.stdout, flag


# --- the option tables ---------------------------------------------------------------------------------------------

PROGRESS_COMMANDS = {"train", "eval", "compare", "quickstart", "sweep", "prepare"}
"""The commands that show progress bars: each takes --no-progress."""


def sample_value(option) -> list[str]:
    """Text that option ``option`` accepts: [] for a switch, else its default as typed, or a value of its type."""
    if option.value == "none":
        return []
    choices = literal_choices(option.type)
    if choices:
        return [str(choices[0])]
    if option.default is not None and option.default != []:
        return [value_text(option.default)]
    tp = strip_optional(option.type)
    if typing.get_origin(tp) is list:
        tp = typing.get_args(tp)[0]
    return [{int: "16", float: "0.5", bool: "true", str: "text"}[tp]]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_flag_in_help_is_accepted_by_that_command(name):
    table = option_table(name)
    text = table.help()
    printed = set(re.findall(r"(?<![\w-])--[a-z][\w.-]*[\w]", text))
    assert printed - {"--help"} <= set(table.by_flag), printed - set(table.by_flag)
    assert ("--no-progress" in text) == (name in PROGRESS_COMMANDS)
    required = [arg for o in table.options if o.required for arg in (o.flag, *sample_value(o))]
    positionals = ["x"] * sum(p.required for p in table.positionals)
    for flag in sorted(printed - {"--help"}):
        option = table.by_flag[flag]
        if option.target == "meta":
            continue
        parsed = table.parse([*positionals, *required, flag, *sample_value(option)])
        got = parsed.config if option.target == "config" else parsed.params
        assert option.key in got, flag
        if flag == option.negative:
            assert got[option.key] in (False, [False]), flag


def test_readme_and_docs_use_only_flags_of_the_option_tables():
    used = list(documented_commands())
    assert len(used) > 30 and {name for name, _, _ in used} >= {"train", "eval", "sweep", "generate", "lm-eval"}
    for name, tokens, where in used:
        assert name in COMMANDS, (where, name)
        flags = set(option_table(name).by_flag) | {"--help"}
        for token in tokens:
            if token.startswith("--"):
                assert token.split("=")[0] in flags, (where, name, token)


def documented_commands():
    """(command, its tokens, file) of every ``longssm CMD ...`` in the README's and docs' code blocks and inline
    code (torchrun ``-m longssm CMD`` included; a command ends at a shell comment or separator)."""
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), REPO / "benchmarks" / "README.md"]:
        text = path.read_text(encoding="utf-8")
        lines = [line for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
                 for line in block.replace("\\\n", " ").splitlines()]
        lines += re.findall(r"`([^`\n]*longssm [a-z][^`\n]*)`", text)
        for line in lines:
            for match in re.finditer(r"(?:^|\s)longssm ([a-z][a-z-]*)(.*)", line):
                if match.group(1) in ("does", "builds", "fast", "vs", "runs", "carries", "is"):
                    continue  # prose, not a command
                rest = re.split(r"\s(?:#|&&|\|\||;|\|)", match.group(2))[0]
                yield match.group(1), rest.split(), path.name


def test_argv_is_sorted_into_parameters_and_config_values():
    parsed = option_table("train").parse(["--config", "mamba_tiny", "--run-dir", "r", "train.lr=1e-3",
                                          "--model.d_model=64", "--train.compile", "--no-progress", "--overwrite",
                                          "--train.seq_len", "32", "--state.p_zero", "null"])
    assert parsed.config_file == "mamba_tiny" and parsed.params == {"run_dir": "r", "overwrite": True}
    assert parsed.config == {"train.lr": 1e-3, "model.d_model": 64, "train.compile": True, "train.progress": False,
                             "train.seq_len": 32, "state.p_zero": None}
    parsed = option_table("eval").parse(["run", "--lengths", "64,16", "--no-cache", "--json", "o.json",
                                         "--passkey-depths=0,1", "--max-tokens", "512"])
    assert parsed.params == {"run": "run", "json_out": "o.json"}
    assert parsed.config == {"lengths": [64, 16], "use_cache": False, "passkey_depths": [0.0, 1.0], "max_tokens": 512}
    parsed = option_table("sweep").parse(["--config", "a.yaml", "--grid", "train.seq_len=16,64", "--out", "x.1",
                                          "--model.d_model", "64", "--grid=state.scheme=zero,previous",
                                          "--no-progress", "train.lr=1e-3"])
    assert parsed.params == {"config_file": "a.yaml", "grid": ["train.seq_len=16,64", "state.scheme=zero,previous"],
                             "out": "x.1", "progress": False}
    assert parsed.config == {"model.d_model": 64, "train.lr": 1e-3}


@pytest.mark.parametrize("name, argv, message", [
    ("train", ["--run_dir", "r"], "unknown option --run_dir (did you mean --run-dir?)"),
    ("train", ["--train.seq-len", "8"], "unknown config key 'train.seq-len' (did you mean train.seq_len?)"),
    ("eval", ["r", "--max_tokens", "8"], "unknown option --max_tokens (did you mean --max-tokens?)"),
    ("eval", ["r", "--json"], "--json needs a value"),
    ("eval", ["r", "--no-cache=1"], "--no-cache takes no value"),
    ("eval", [], "missing argument: run"),
    ("plot", ["a.json"], "missing option --out"),
    ("calibrate", ["r", "--out", "o"], "missing options --method, --target-length, --data"),
    ("generate", ["r", "s"], "unexpected argument 's'"),
    ("train", ["-x"], "unknown option -x"),
])
def test_bad_argv_is_a_one_line_user_error(name, argv, message):
    with pytest.raises(UserError) as e:
        option_table(name).parse(argv)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv, message", [
    (["eval", "r", "--max-tokens", "many"], "--max-tokens must be an integer or null; got 'many'"),
    (["eval", "r", "--chunk", "0"], "--chunk must be >= 1; got 0"),
    (["generate", "r", "--max-new-tokens", "x"], "--max-new-tokens must be an integer; got 'x'"),
    (["train", "--train.lr", "fast"], "--train.lr must be a number; got 'fast'"),
    (["quickstart", "--max-length", "8"], "--max-length must be >= 16; got 8"),
])
def test_config_errors_are_shown_with_the_flag(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
