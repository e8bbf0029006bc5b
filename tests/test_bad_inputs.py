"""Bad input through the real command line, a child process per case: a non-zero exit (2 for usage errors), no
traceback, one stderr line that names the flag, file or value, no new run directory or output, and every file of
the existing runs unchanged (hashed before and after each case).

The runs the cases touch are trained once (``inputs``); cases that need a damaged run get a damaged copy. Each case
runs ``python -m longssm`` forked from a server that imported torch once (``ForkedCli``); a sample of the cases is
checked to give the same exit code and stderr from a fresh interpreter.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import bad_cases_config
import bad_cases_corpus
import bad_cases_families
import bad_cases_os
import bad_cases_outputs
import bad_cases_runs
import bad_cases_tasks
from conftest import ForkedCli, assert_one_line_error, file_hashes, longssm, tiny_train_args
from longssm.cli import COMMANDS


@dataclass(frozen=True)
class Inputs:
    root: Path
    corpus: Path
    cache: Path
    runs: Path
    """Every run of the module (``done`` and its damaged copies): hashed around each case."""

    def path(self, name: str) -> str:
        return str(self.root / name)

    def run(self, name: str = "done") -> str:
        return str(self.runs / name)

    def train(self, *extra: str, run_dir: str | None = None) -> list[str]:
        """``longssm train`` of the tiny model into a new run directory (``run_dir`` replaces it)."""
        args = tiny_train_args(self.corpus, self.cache, self.root / "new", *extra)
        if run_dir is not None:
            args[args.index("--run-dir") + 1] = run_dir
        return args


def damaged_copy(runs: Path, name: str, damage) -> None:
    """``runs/name``: a copy of ``runs/done`` with ``damage(copy)`` applied."""
    shutil.copytree(runs / "done", runs / name)
    damage(runs / name)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def set_config(ckpt: Path, section: str, key: str, value) -> None:
    import yaml

    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    cfg[section][key] = value
    (ckpt / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, wiki_text) -> Inputs:
    root = tmp_path_factory.mktemp("bad_inputs")
    corpus = root / "corpus.txt"
    corpus.write_text(wiki_text[:20_000], encoding="utf-8")
    made = Inputs(root, corpus, root / "cache", root / "runs")
    proc = longssm(*made.train("--train.checkpoint_every", "2", "--train.keep_last", "3", run_dir=made.run()))
    assert proc.returncode == 0, proc.stderr
    ckpts = made.runs / "done" / "checkpoints"
    damaged_copy(made.runs, "truncated", lambda r: truncate(r / "final" / "model.safetensors"))
    damaged_copy(made.runs, "missing_file", lambda r: (r / "final" / "config.yaml").unlink())
    damaged_copy(made.runs, "resized", lambda r: set_config(r / "final", "model", "d_model", 32))
    damaged_copy(made.runs, "bpe_vocab", lambda r: set_config(r / "final", "data", "tokenizer", "gpt2"))
    damaged_copy(made.runs, "all_damaged", lambda r: [truncate(p / "model.safetensors") for p in
                                                      (r / "checkpoints").glob("step-*")])
    assert len(list(ckpts.glob("step-*"))) == 3

    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("  \n\n \n")
    (root / "latin1.txt").write_bytes("café crème brûlée\n".encode("latin-1") * 200)
    (root / "short.txt").write_text("just a few bytes of text\n")
    (root / "a_directory").mkdir()
    (root / "a_file").write_text("not a run directory\n")
    np.save(root / "negative.npy", np.array([5, -1, 7] * 200, dtype=np.int64))
    np.save(root / "too_large.npy", np.array([5, 300, 7] * 200, dtype=np.int64))
    (root / "tokenizer.json").write_text("{ this is not a tokenizer")
    (root / "syntax.yaml").write_text("train:\n  lr: 0.001\n  steps: [3\n")
    (root / "list_number.yaml").write_text("train:\n  lr: [0.001, 0.002]\n")
    (root / "not_mapping.yaml").write_text("- train\n- model\n")
    (root / "other_shape.json").write_text(json.dumps({"loss": [1, 2, 3]}))
    (root / "list.json").write_text(json.dumps([{"ppl_vs_length": {"16": 3.0}}]))
    (root / "wrong_metric.json").write_text(json.dumps({"ppl_vs_length": "high"}))
    (root / "not_json.json").write_text("{ppl_vs_length: 3")
    (root / "result.json").write_text(json.dumps({"ppl_vs_length": {"8": 9.0, "16": 8.0}, "train_seq_len": 8}))
    (root / "existing.txt").write_text("keep me\n")
    for extra in EXTRA:
        extra.make_inputs(root)
    return made


# (case id, argv as a function of the inputs, text the one error line must contain, exit code)
Case = tuple[str, object, str, int]
CASES: list[Case] = [
    # data
    ("data missing", lambda i: i.train("--data.train", i.path("nope.txt")), "data file not found: ", 2),
    ("data empty", lambda i: i.train("--data.train", i.path("empty.txt")), "data file is empty", 2),
    ("data only blank lines", lambda i: i.train("--data.train", i.path("blank.txt")), "data file has no text", 2),
    ("data is a directory", lambda i: i.train("--data.train", i.path("a_directory")), "is a directory", 2),
    ("data not UTF-8 (gpt2 BPE)", lambda i: i.train("--data.train", i.path("latin1.txt"), "--data.tokenizer", "gpt2"),
     "latin1.txt is not UTF-8 text", 2),
    ("data not UTF-8 (byte)", lambda i: i.train("--data.train", i.path("latin1.txt")), "latin1.txt is not UTF-8", 2),
    ("corpus shorter than B*(T+1)", lambda i: i.train("--data.train", i.path("short.txt")), "corpus too short", 2),
    ("npy negative ids", lambda i: i.train("--data.train", i.path("negative.npy")), "negative id (-1)", 2),
    ("npy id beyond the vocabulary", lambda i: i.train("--data.train", i.path("too_large.npy")), "id 300 >= vocab", 2),
    ("empty validation file", lambda i: i.train("--data.valid", i.path("empty.txt"), "--train.eval_every", "2"),
     "empty.txt", 2),
    ("tokenizer file not a tokenizer", lambda i: i.train("--data.tokenizer", i.path("tokenizer.json")),
     "cannot read tokenizer", 2),
    ("tokenizer vocab > embedding", lambda i: i.train("--model.vocab_size", "100"), "model.vocab_size=100", 2),
    # ranges
    ("T = 0", lambda i: i.train("--train.seq_len", "0"), "train.seq_len must be >= 1; got 0", 2),
    ("T < 0", lambda i: i.train("--train.seq_len", "-3"), "train.seq_len must be >= 1; got -3", 2),
    ("B = 0", lambda i: i.train("--train.batch_size", "0"), "train.batch_size must be >= 1", 2),
    ("lr = 0", lambda i: i.train("--train.lr", "0"), "train.lr must be > 0", 2),
    ("lr < 0", lambda i: i.train("--train.lr", "-1e-3"), "train.lr must be > 0", 2),
    ("p_zero > 1", lambda i: i.train("--state.p_zero", "1.5"), "state.p_zero", 2),
    ("p_zero < 0", lambda i: i.train("--state.p_zero", "-0.1"), "state.p_zero", 2),
    ("noise sigma < 0", lambda i: i.train("--state.noise_std", "-1"), "state.noise_std", 2),
    ("checkpoint_every < 0", lambda i: i.train("--train.checkpoint_every", "-1"), "train.checkpoint_every", 2),
    ("warmup_steps < 0", lambda i: i.train("--train.warmup_steps", "-5"), "train.warmup_steps", 2),
    ("grad_clip < 0", lambda i: i.train("--train.grad_clip", "-1"), "train.grad_clip", 2),
    # config
    ("unknown key", lambda i: i.train("--model.nonsense", "3"), "unknown config key 'model.nonsense'", 2),
    ("mistyped value", lambda i: i.train("--train.steps", "many"), "train.steps must be an integer", 2),
    ("YAML syntax error", lambda i: i.train("--config", i.path("syntax.yaml")), "line", 2),
    ("YAML list for a number", lambda i: i.train("--config", i.path("list_number.yaml")), "train.lr", 2),
    ("YAML not a mapping", lambda i: i.train("--config", i.path("not_mapping.yaml")),
     "not_mapping.yaml must hold a mapping", 2),
    ("CLI list for a number", lambda i: i.train("--train.lr", "[1,2]"), "train.lr", 2),
    ("unknown family", lambda i: i.train("--model.family", "transformer"), "model.family must be one of", 2),
    ("unknown scheme", lambda i: i.train("--state.scheme", "magic"), "state.scheme must be one of", 2),
    ("config file as positional", lambda i: i.train("foo.yaml"), "--config foo.yaml", 2),
    ("bad train.device", lambda i: i.train("--train.device", "tpu"), "train.device must be", 2),
    # run directories and checkpoints
    ("run dir is a file", lambda i: i.train(run_dir=i.path("a_file")), "is a file", 2),
    ("finished run, no --resume/--overwrite", lambda i: i.train(run_dir=i.run()), "--resume auto or", 2),
    ("--resume and --overwrite", lambda i: i.train("--resume", "auto", "--overwrite", run_dir=i.run()),
     "give one of them", 2),
    ("resume: another size", lambda i: i.train("--resume", i.run() + "/checkpoints/step-00000006",
                                               "--model.d_model", "32"), "model.d_model is 16 there and 32", 2),
    ("resume: another family", lambda i: i.train("--resume", i.run() + "/checkpoints/step-00000006",
                                                 "--model.family", "gru"), "model.family is 'mamba' there", 2),
    ("resume: changed batch size", lambda i: i.train("--resume", "auto", "--train.batch_size", "8", run_dir=i.run()),
     "train.batch_size is 4 there and 8 here", 2),
    ("resume: not a checkpoint", lambda i: i.train("--resume", i.path("a_directory")), "a_directory", 2),
    ("resume: truncated checkpoint", lambda i: i.train("--resume", i.run("all_damaged") + "/checkpoints/step-00000006"),
     "cannot read weights", 2),
    ("resume auto: every checkpoint damaged", lambda i: i.train("--resume", "auto", run_dir=i.run("all_damaged")),
     "no usable checkpoint", 2),
    # eval
    ("eval lengths empty", lambda i: ["eval", i.run(), "--lengths", ""], "--lengths", 2),
    ("eval lengths zero", lambda i: ["eval", i.run(), "--lengths", "0"], "--lengths", 2),
    ("eval lengths negative", lambda i: ["eval", i.run(), "--lengths", "16,-4"], "--lengths", 2),
    ("eval lengths non-numeric", lambda i: ["eval", i.run(), "--lengths", "abc"], "--lengths", 2),
    ("eval lengths empty item", lambda i: ["eval", i.run(), "--lengths", "16,,32"], "--lengths", 2),
    ("eval length beyond the data", lambda i: ["eval", i.run(), "--lengths", "100000000", "--no-progress"],
     "100000000", 2),
    ("eval chunk 0", lambda i: ["eval", i.run(), "--chunk", "0"], "chunk", 2),
    ("eval chunk < 0", lambda i: ["eval", i.run(), "--chunk", "-8"], "chunk", 2),
    ("eval device tpu", lambda i: ["eval", i.run(), "--device", "tpu"], "--device must be", 2),
    ("eval missing run", lambda i: ["eval", i.path("no_run")], "no such run", 2),
    ("eval truncated safetensors", lambda i: ["eval", i.run("truncated"), "--no-progress"], "cannot read weights", 2),
    ("eval checkpoint missing a file", lambda i: ["eval", i.run("missing_file")], "config.yaml is missing", 2),
    ("eval checkpoint of another size", lambda i: ["eval", i.run("resized"), "--no-progress"], "do not fit", 2),
    ("eval tokenizer > vocabulary", lambda i: ["eval", i.run("bpe_vocab"), "--no-progress"], "vocabulary of 256", 2),
    # plot / compare
    ("plot JSON of another shape", lambda i: ["plot", i.path("other_shape.json"), "--out", i.path("p.png")],
     "other_shape.json is not a longssm eval result", 2),
    ("plot JSON list", lambda i: ["plot", i.path("list.json"), "--out", i.path("p.png")], "list.json", 2),
    ("plot metric of the wrong shape", lambda i: ["plot", i.path("wrong_metric.json"), "--out", i.path("p.png")],
     "wrong_metric.json", 2),
    ("plot invalid JSON", lambda i: ["plot", i.path("not_json.json"), "--out", i.path("p.png")], "not valid JSON", 2),
    ("plot --out p.txt", lambda i: ["plot", i.path("result.json"), "--out", i.path("p.txt")], "p.txt", 2),
    ("compare --out existing file", lambda i: ["compare", i.path("result.json"), "--out", i.path("existing.txt")],
     "existing.txt is a file", 2),
    ("compare not a result", lambda i: ["compare", i.path("other_shape.json"), "--out", i.path("cmp")],
     "other_shape.json", 2),
    # quickstart
    ("quickstart --max-length 0", lambda i: ["quickstart", "--max-length", "0", "--out", i.path("qs")],
     "--max-length", 2),
    ("quickstart --max-length 8", lambda i: ["quickstart", "--max-length", "8", "--out", i.path("qs")],
     "--max-length", 2),
    ("quickstart --eval-tokens 0", lambda i: ["quickstart", "--eval-tokens", "0", "--out", i.path("qs")],
     "--eval-tokens", 2),
]
# The commands of other issues, as they land in the command line.
NEW_COMMAND_CASES: dict[str, list[Case]] = {
    "generate": [
        ("generate without a prompt", lambda i: ["generate", i.run()], "--prompt", 2),
        ("generate truncated safetensors", lambda i: ["generate", i.run("truncated"), "--prompt", "a"],
         "cannot read weights", 2),
    ],
    "sweep": [
        ("sweep --grid without values", lambda i: ["sweep", "--grid", "train.seq_len", "--out", i.path("sw")],
         "--grid must be KEY=V1,V2", 2),
        ("sweep unknown grid key", lambda i: ["sweep", "--grid", "model.nonsense=1,2", "--out", i.path("sw")],
         "unknown config key 'model.nonsense'", 2),
    ],
    "lm-eval": [("lm-eval missing run", lambda i: ["lm-eval", i.path("no_run"), "--tasks", "x"], "no such run", 2)],
    "import": [("import missing directory", lambda i: ["import", i.path("no_ckpt"), "--out", i.path("imported")],
                "no_ckpt", 2)],
    "export": [("export into an existing path", lambda i: ["export", i.run(), "--out", i.path("a_directory")],
                "a_directory exists", 2)],
    "calibrate": [("calibrate missing data", lambda i: ["calibrate", i.run(), "--method", "delta_scale",
                                                         "--target-length", "64", "--data", i.path("nope.txt"),
                                                         "--out", i.path("cal")], "nope.txt", 2)],
}
CASES += [case for command, cases in NEW_COMMAND_CASES.items() if command in COMMANDS for case in cases]
EXTRA = (bad_cases_os, bad_cases_config, bad_cases_outputs, bad_cases_runs, bad_cases_corpus, bad_cases_families,
         bad_cases_tasks)
"""The cases of issue 20, one module per topic: safe runs, output paths, config values, operating-system errors."""
CASES += [case for module in EXTRA for case in module.CASES]


OUTPUTS = ("p.png", "p.txt", "cmp", "qs", "sw", "imported", "cal", *(out for module in EXTRA for out in module.OUTPUTS))
"""What the plot, compare, quickstart, sweep, import and calibrate cases would write into ``inputs.root``."""


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    forked = ForkedCli(tmp_path_factory.mktemp("cli"))
    yield forked
    forked.close()


@pytest.mark.parametrize("name, argv, needle, code", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_one_line_error_and_changes_nothing(inputs, cli, name, argv, needle, code):
    before = file_hashes(inputs.runs)
    assert_one_line_error(cli(*argv(inputs)), needle, code)
    assert file_hashes(inputs.runs) == before, "a run was changed"
    assert not (inputs.root / "new").exists(), "a new run was started before the input was checked"
    assert [out for out in OUTPUTS if (inputs.root / out).exists()] == []


SAMPLE = ["eval truncated safetensors"]


@pytest.mark.parametrize("name", SAMPLE)
def test_a_fresh_interpreter_gives_the_same_error(inputs, cli, name):
    argv = next(case[1] for case in CASES if case[0] == name)(inputs)
    fresh, forked = longssm(*argv), cli(*argv)
    assert (fresh.returncode, fresh.stderr) == (forked.returncode, forked.stderr)
