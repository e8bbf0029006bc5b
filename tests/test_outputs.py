"""Output paths (``longssm/outputs.py``): a command overwrites its own earlier outputs, and with ``--force`` the
user's files; the ledger of what longssm wrote survives reruns and other commands. Through the real command line
(one tiny trained run, forked commands); the refusals are bad-input cases in ``tests/bad_cases_outputs.py``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import ForkedCli, assert_one_line_error, longssm, tiny_train_args
from longssm.errors import UserError
from longssm.outputs import LEDGER, check_file, check_not_protected, read_ledger, staged_outputs, write_texts


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory, wiki_text) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    corpus = root / "corpus.txt"
    corpus.write_text(wiki_text[:20_000], encoding="utf-8")
    proc = longssm(*tiny_train_args(corpus, root / "cache", root / "run"))
    assert proc.returncode == 0, proc.stderr
    return root / "run"


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    forked = ForkedCli(tmp_path_factory.mktemp("cli"))
    yield forked
    forked.close()


def evaluate(cli, run: Path, *extra: str, lengths: str = "8"):
    return cli("eval", str(run), "--lengths", lengths, "--no-progress", "--no-cache", *extra)


def test_a_rerun_overwrites_its_own_output_and_an_edited_one_needs_force(run, cli, tmp_path):
    out, report = tmp_path / "out.json", tmp_path / "out.md"
    assert evaluate(cli, run, "--json", str(out)).returncode == 0
    assert read_ledger(tmp_path) == {"out.json": sha(out), "out.md": sha(report)}
    proc = evaluate(cli, run, "--json", str(out), lengths="8,16")  # the same output, another content
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads(out.read_text())["ppl_vs_length"]) == ["8", "16"]
    assert read_ledger(tmp_path) == {"out.json": sha(out), "out.md": sha(report)}  # recorded anew

    out.write_text(out.read_text() + "\n")  # the user edits it: no longer what longssm wrote
    edited = out.read_bytes()
    assert_one_line_error(evaluate(cli, run, "--json", str(out)), "a file changed since longssm wrote it", 2)
    assert out.read_bytes() == edited
    assert evaluate(cli, run, "--json", str(out), "--force").returncode == 0
    assert list(json.loads(out.read_text())["ppl_vs_length"]) == ["8"]
    assert evaluate(cli, run, "--json", str(out)).returncode == 0  # ours again: no --force needed


def test_force_overwrites_a_foreign_file_which_is_then_ours(run, cli, tmp_path):
    out, report = tmp_path / "mine.json", tmp_path / "mine.md"
    out.write_text("the user's\n")
    report.write_text("the user's report\n")
    assert_one_line_error(evaluate(cli, run, "--json", str(out)), "mine.json, a file longssm did not write", 2)
    assert out.read_text() == "the user's\n" and not (tmp_path / LEDGER).exists()
    assert evaluate(cli, run, "--json", str(out), "--force").returncode == 0
    assert json.loads(out.read_text())["ppl_vs_length"] and report.read_text().startswith("|")
    assert evaluate(cli, run, "--json", str(out)).returncode == 0


def test_the_ledger_survives_other_commands_and_outputs_of_one_directory(run, cli, tmp_path):
    out = tmp_path / "r.json"
    assert evaluate(cli, run, "--json", str(out), "--plots", str(tmp_path)).returncode == 0
    proc = cli("plot", str(out), "--out", str(tmp_path / "p.png"))
    assert proc.returncode == 0, proc.stderr
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me\n")
    proc = cli("compare", str(out), "--out", str(tmp_path))  # the same directory: every file of both is ours
    assert proc.returncode == 0, proc.stderr
    names = {"r.json", "r.md", "ppl_vs_length.png", "ppl_vs_length.csv", "p.png", "p.csv", "compare.md",
             "compare.json"}
    assert read_ledger(tmp_path) == {name: sha(tmp_path / name) for name in names}
    assert mine.read_text() == "keep me\n" and "notes.txt" not in read_ledger(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, LEDGER, "notes.txt"])  # no staging left
    for argv in (("eval", str(run), "--lengths", "8", "--no-progress", "--no-cache", "--json", str(out), "--plots",
                  str(tmp_path)), ("plot", str(out), "--out", str(tmp_path / "p.png")),
                 ("compare", str(out), "--out", str(tmp_path))):
        proc = cli(*argv)
        assert proc.returncode == 0, proc.stderr


def test_a_run_is_refused_whatever_force_says_and_a_lone_config_yaml_is_no_run(run, tmp_path):
    for target in (run / "final" / "x.json", run / "checkpoints" / "new", run / "metrics.jsonl"):
        with pytest.raises(UserError, match="choose a path outside it"):
            check_file(target, "--json", force=True)
    (tmp_path / "config.yaml").write_text("train: {}\n")  # a user's config file, not a run
    assert check_not_protected(tmp_path / "config.yaml", "--json") == tmp_path / "config.yaml"
    assert check_file(tmp_path / "config.yaml", "--json", force=True) == tmp_path / "config.yaml"


def test_nothing_is_written_when_one_destination_is_refused(tmp_path):
    (tmp_path / "b.txt").write_text("foreign\n")
    with pytest.raises(UserError, match=r"b\.txt, a file longssm did not write"):
        write_texts({tmp_path / "a.txt": "a", tmp_path / "b.txt": "b"}, "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]
    with staged_outputs(tmp_path / "new", "--out") as staging:  # a new directory: published and recorded
        (staging / "b.txt").write_text("b")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [LEDGER, "b.txt"]
    with pytest.raises(UserError, match=r"b\.txt, a file longssm did not write"), \
            staged_outputs(tmp_path, "--out") as staging:
        (staging / "a.txt").write_text("a")
        (staging / "b.txt").write_text("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt", "new"]  # a.txt was not published either
    assert (tmp_path / "b.txt").read_text() == "foreign\n"
    with pytest.raises(RuntimeError), staged_outputs(tmp_path / "other", "--out") as staging:
        (staging / "c.txt").write_text("c")
        raise RuntimeError("the computation failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt", "new"]  # the directory it made is gone too


def test_a_damaged_ledger_makes_every_file_foreign(tmp_path):
    write_texts({tmp_path / "a.txt": "a"}, "--out")
    assert read_ledger(tmp_path) == {"a.txt": hashlib.sha256(b"a").hexdigest()}
    (tmp_path / LEDGER).write_text("{ not json")
    assert read_ledger(tmp_path) == {}
    with pytest.raises(UserError, match="a file longssm did not write"):
        check_file(tmp_path / "a.txt", "--out")
    write_texts({tmp_path / "a.txt": "again"}, "--out", force=True)
    assert read_ledger(tmp_path) == {"a.txt": hashlib.sha256(b"again").hexdigest()}


def test_a_directory_named_final_or_checkpoints_does_not_make_its_parent_a_run(tmp_path):
    """A user's output tree runs/final/sweep: "final" alone is no evidence that runs/ is a run (it was refused as
    "where the run runs/ keeps its checkpoints" before); a real run's final/ still is protected."""
    for name in ("final", "checkpoints"):
        (tmp_path / f"mine_{name}" / name / "sweep").mkdir(parents=True)
        check_not_protected(tmp_path / f"mine_{name}" / name / "sweep" / "eval.json", "--json")
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(UserError, match=r"where the run .* keeps its checkpoints"):
        check_not_protected(tmp_path / "run" / "final" / "eval.json", "--json")
