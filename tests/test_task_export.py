"""``longssm tasks export``: the long-context tasks as lm-eval tasks, request for request the instances that the
metrics score, and scored alike by ``longssm lm-eval`` and ``longssm eval``."""

from __future__ import annotations

import json
import shlex
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml

from conftest import assert_one_line_error, file_hashes, tiny_overrides
from longssm.cli import main
from longssm.config import EvalConfig, load_config
from longssm.data.tasks import TASKS, axis_key, instances, load_haystack
from longssm.data.tokenizer import ByteTokenizer
from longssm.errors import UserError
from longssm.evaluate.tasks import axis_values, task_settings
from longssm.task_export import export_tasks

# tiny answer spaces (1-digit values, 1-letter words and keys) and the repeat haystack: fast, and a briefly trained
# byte model gets some answers right (a copied one-letter word is its likeliest letter now and then)
SETTINGS = {"task_lengths": [320], "task_trials": 3, "task_haystack": "repeat", "seed": 7, "task_depths": [0.0, 1.0],
            "mqar_pairs": [2, 4], "mqar_digits": 1, "mqar_key_letters": 1, "copy_fractions": [0.25, 0.5],
            "copy_letters": 1, "niah_needles": 2, "niah_values": 2, "niah_digits": 1, "niah_key_letters": 1,
            "vt_hops": 2, "vt_chains": 1, "vt_digits": 1, "vt_name_letters": 1, "passkey_digits": 1}
METRICS = ["mqar", "copy", "niah_multikey", "niah_multivalue", "niah_multiquery", "variable_tracking"]


def flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        out += [f"--{key.replace('_', '-')}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return out


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_writes_every_answer_of_the_metric_instances_as_one_request(tmp_path):
    cfg, tok = EvalConfig(**SETTINGS), ByteTokenizer()
    manifest = export_tasks(tmp_path / "out", list(TASKS), "byte", cfg)
    hay = load_haystack(cfg.task_haystack, tok)
    for name, task in TASKS.items():
        rows = rows_of(tmp_path / "out" / f"{name}.jsonl")
        by_instance = defaultdict(list)
        for row in rows:
            by_instance[row["length"], axis_key(task, row["axis_value"]), row["instance"]].append(row)
        expected = 0
        for length in cfg.task_lengths:
            for value in axis_values(cfg, task):
                cell = instances(task, tok, hay, length, value, cfg.task_trials, cfg.seed, task_settings(cfg, task))
                for k, instance in enumerate(cell):
                    got = by_instance.pop((length, axis_key(task, value), k))
                    assert [r["answer"] for r in got] == list(range(len(instance.answers)))
                    assert [r["target"] for r in got] == instance.answer_texts()
                    for row, (a, b) in zip(got, instance.spans()):
                        assert row["target"].startswith(" ")
                        assert tok.encode(row["context"]) == instance.tokens[:a]
                        assert tok.encode(row["context"] + row["target"]) == instance.tokens[:b]
                    expected += len(instance.answers)
        assert not by_instance and len(rows) == expected == manifest["tasks"][name]["requests"]
        spec = yaml.safe_load((tmp_path / "out" / f"{name}.yaml").read_text())
        assert spec["task"] == f"longssm_{name}" and spec["output_type"] == "loglikelihood"
        assert (spec["doc_to_text"], spec["doc_to_target"], spec["target_delimiter"]) == ("{{context}}",
                                                                                          "{{target}}", "")
        assert Path(spec["dataset_kwargs"]["data_files"]["test"]) == (tmp_path / "out" / f"{name}.jsonl").resolve()
    assert "longssm lm-eval RUN --include-path" in (tmp_path / "out" / "README.md").read_text()
    # the manifest's command makes the same export again; a rerun overwrites longssm's own files
    argv = shlex.split(manifest["commands"]["export"])[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    assert main(argv) == 0 and main(argv) == 0
    for name in TASKS:
        assert (tmp_path / "again" / f"{name}.jsonl").read_bytes() == (tmp_path / "out" / f"{name}.jsonl").read_bytes()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, wiki_text) -> Path:
    """A byte Mamba trained for 150 short steps: its argmax is text-like (a space after a word, a frequent letter
    after a space), so a few copied one-letter words are right."""
    from longssm.train import train

    root = tmp_path_factory.mktemp("task_export")
    corpus = root / "corpus.txt"
    corpus.write_text(wiki_text, encoding="utf-8")
    cfg = tiny_overrides(corpus, root / "cache", model__d_model=32, train__steps=150, train__seq_len=32,
                         train__batch_size=8, train__log_every=50, train__warmup_steps=5)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config(None, cfg), root / "run")
    finally:
        torch.set_num_threads(before)
    return root / "run"


@pytest.mark.slow
def test_lm_eval_of_the_export_scores_as_the_metrics(trained_run, tmp_path, capsys, monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    pytest.importorskip("lm_eval")
    out = tmp_path / "tasks"
    assert main(["tasks", "export", "--out", str(out), "--tasks", ",".join(METRICS), *flags(SETTINGS)]) == 0
    assert main(["eval", str(trained_run), "--metrics", ",".join(METRICS), *flags(SETTINGS), "--device", "cpu",
                 "--no-progress", "--json", str(tmp_path / "eval.json")]) == 0
    assert main(["lm-eval", str(trained_run), "--include-path", str(out), "--device", "cpu", "--batch-size", "16",
                 "--tasks", ",".join(f"longssm_{t}" for t in METRICS), "--output", str(tmp_path / "lm.json")]) == 0
    capsys.readouterr()
    metrics = json.loads((tmp_path / "eval.json").read_text())
    harness = json.loads((tmp_path / "lm.json").read_text())["results"]
    accuracies = {}
    for name in METRICS:
        result = metrics[name]
        cells = [(L, v) for L in result["answers"] for v in result["answers"][L]]
        answers = sum(result["answers"][L][v] for L, v in cells)
        hits = sum(result["accuracy"][L][v] * result["answers"][L][v] for L, v in cells)
        assert answers == len(rows_of(out / f"{name}.jsonl"))
        accuracies[name] = hits / answers
        assert harness[f"longssm_{name}"]["acc,none"] == pytest.approx(accuracies[name], abs=1e-9), name
    assert any(0 < acc < 1 for acc in accuracies.values()), accuracies  # not a vacuous 0 == 0
    # and cell by cell: the adapter's is_greedy of each exported request, against the metric's accuracy per cell
    from lm_eval.api.instance import Instance as Request

    from longssm.lm_eval_adapter import LongSSMLM

    lm = LongSSMLM(str(trained_run), device="cpu", batch_size=16)
    for name in METRICS:
        rows = rows_of(out / f"{name}.jsonl")
        scored = lm.loglikelihood([Request("loglikelihood", {}, (r["context"], r["target"]), i)
                                   for i, r in enumerate(rows)], disable_tqdm=True)
        cells = defaultdict(list)
        for row, (_, greedy) in zip(rows, scored):
            cells[str(row["length"]), axis_key(TASKS[name], row["axis_value"])].append(greedy)
        accuracy = metrics[name]["accuracy"]
        assert {cell: sum(g) / len(g) for cell, g in cells.items()} == pytest.approx(
            {(L, v): accuracy[L][v] for L in accuracy for v in accuracy[L]}, abs=1e-9), name


def run(*argv: str, capsys) -> subprocess.CompletedProcess:
    code = main(list(argv))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


@pytest.mark.parametrize(("argv", "needle"), [
    (["--tasks", "mqar,bogus"], "unknown task 'bogus'"),
    (["--tasks", "mqar", "--mqar-bogus", "3"], "unknown option --mqar-bogus"),
    (["--tasks", "mqar", "--mqar-digits", "0"], "--mqar-digits must be >= 1"),
    (["--tasks", "niah_multikey", "--task-lengths", "64"], "niah_multikey: length 64 is too short"),
    (["--tasks", "copy", "--copy-fractions", "0.9"], "--copy-fractions"),
])
def test_bad_inputs_are_one_line_and_write_nothing(argv, needle, tmp_path, capsys):
    out = tmp_path / "out"
    proc = run("tasks", "export", "--out", str(out), *argv, capsys=capsys)
    assert_one_line_error(proc, needle, 2)
    assert proc.stderr.startswith("longssm tasks: error: ")
    assert not out.exists()
    assert_one_line_error(run("tasks", "list", "--out", str(out), "--tasks", "mqar", capsys=capsys),
                          "unknown action 'list'", 2)


def test_files_longssm_did_not_write_are_kept_unless_forced(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mqar.yaml").write_text("mine\n")
    (out / "notes.txt").write_text("mine too\n")
    before = file_hashes(out)
    argv = ["tasks", "export", "--out", str(out), "--tasks", "mqar", *flags(SETTINGS)]
    assert_one_line_error(run(*argv, capsys=capsys), "would overwrite", 2)
    assert file_hashes(out) == before
    assert run(*argv, "--force", capsys=capsys).returncode == 0
    assert (out / "notes.txt").read_text() == "mine too\n" and "longssm_mqar" in (out / "mqar.yaml").read_text()


class MergingTokenizer(ByteTokenizer):
    """Bytes, but ": " is one token: a tokenizer that merges across the pieces of an instance."""

    name, identity = "merging", "merging-test"

    def encode(self, text: str) -> list[int]:
        out, data, i = [], text.encode("utf-8"), 0
        while i < len(data):
            if data[i:i + 2] == b": ":
                out.append(256)
                i += 2
            else:
                out.append(data[i])
                i += 1
        return out


def test_a_tokenizer_that_merges_across_pieces_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"task mqar: .* re-tokenizes differently"):
        export_tasks(tmp_path / "out", ["mqar"], MergingTokenizer(), EvalConfig(**SETTINGS))
    assert not (tmp_path / "out").exists()
