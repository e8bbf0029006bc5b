"""``longssm prepare``: every input kind end to end through the CLI, tokens equal to a direct encoding with an EOS
after each document, the same bytes whatever the workers and after a kill -9 and rerun, and a directory that is
never overwritten by mistake. Then training and evaluation read the result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, file_hashes, longssm
from longssm.data.corpus import load_corpus
from longssm.data.prepare import default_eos, prepare_dataset
from longssm.data.prepared import open_prepared
from longssm.data.sources import find_sources, iter_pieces
from longssm.data.tokenizer import load_tokenizer
from longssm.errors import UserError

GPT2_EOS = 50256


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, wiki_text) -> Path:
    """A directory of a .jsonl.zst, a .parquet and a text file: the articles of ``wiki_text``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    root = tmp_path_factory.mktemp("corpus")
    docs = [p + "\n" for p in wiki_text[:40_000].split("\n \n") if p.strip()]
    assert len(docs) >= 10
    rows = "".join(json.dumps({"text": d}) + "\n" for d in docs[:4])
    (root / "in").mkdir()
    (root / "in" / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(rows.encode()))
    pq.write_table(pa.table({"text": docs[4:7]}), root / "in" / "b.parquet")
    (root / "in" / "c.txt").write_text("".join(docs[7:]), encoding="utf-8")  # one document (--split none)
    return root


def expected_tokens(inputs: list[str], tokenizer, eos: int | None, split: str = "none") -> tuple[list[int], list[int]]:
    """The reference: each document encoded whole, EOS after each; (tokens, document starts)."""
    docs: list[str] = []
    for piece in iter_pieces(find_sources(inputs), split=split, piece_chars=1 << 40):
        docs.append(piece.text)
    tokens, starts = [], []
    for d in docs:
        starts.append(len(tokens))
        tokens += tokenizer.encode(d) + ([] if eos is None else [eos])
    return tokens, starts


def tree(root: Path) -> dict[str, str]:
    return {k: v for k, v in file_hashes(root).items() if not k.endswith(".longssm-lock.json")}


def test_prepare_a_directory_of_zst_parquet_and_text_through_the_cli(corpus_dir, tmp_path):
    out = tmp_path / "ds"
    proc = longssm("prepare", str(corpus_dir / "in"), "--tokenizer", "gpt2", "--out", str(out), "--no-progress",
                   "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"prepared {out}: ") and "documents (train)" in proc.stdout
    tok = load_tokenizer("gpt2")
    tokens, starts = expected_tokens([str(corpus_dir / "in")], tok, GPT2_EOS)
    got = open_prepared(str(out), tok, "train")
    assert got.tokens.dtype == np.uint16 and got.tokens[:].tolist() == tokens and got.doc_starts.tolist() == starts
    manifest = json.loads((out / "manifest.json").read_text())
    assert [Path(s["path"]).name for s in manifest["sources"]] == ["a.jsonl.zst", "b.parquet", "c.txt"]
    assert all(len(s["sha256"]) == 64 and s["size"] > 0 for s in manifest["sources"])
    assert manifest["splits"]["train"]["tokens"] == len(tokens) and manifest["eos"] == GPT2_EOS
    assert not (out / "progress.json").exists()
    again = longssm("prepare", str(corpus_dir / "in"), "--tokenizer", "gpt2", "--out", str(out), "--no-progress")
    assert again.returncode == 0 and "is up to date" in again.stdout  # nothing redone


def test_workers_and_shards_do_not_change_the_bytes(corpus_dir, tmp_path, monkeypatch):
    import longssm.data.prepare as prepare

    monkeypatch.setattr(prepare, "BATCH_CHARS", 1000)  # many batches, so shards close at several batch ends
    tok = load_tokenizer("byte")
    inputs = [str(corpus_dir / "in")]
    one = prepare_dataset(inputs, tok, tmp_path / "w1", workers=1, shard_tokens=1500, progress=False)
    two = prepare_dataset(inputs, tok, tmp_path / "w2", workers=2, shard_tokens=1500, progress=False)
    assert len(one.manifest["splits"]["train"]["shards"]) >= 3
    assert tree(tmp_path / "w1") == tree(tmp_path / "w2")
    tokens, starts = expected_tokens(inputs, tok, 0)  # the byte tokenizer's EOS: NUL
    got = open_prepared(str(tmp_path / "w1"), tok, "train")
    assert got.tokens[:].tolist() == tokens and got.doc_starts.tolist() == starts and two.manifest == one.manifest
    shard_sizes = [s["tokens"] for s in one.manifest["splits"]["train"]["shards"]]
    assert sum(shard_sizes) == len(tokens) and all(n >= 1500 for n in shard_sizes[:-1])


KILLER = r"""
import sys, time
import longssm.data.prepare as prepare
from longssm.data.tokenizer import load_tokenizer
prepare.BATCH_CHARS = 800
real = prepare.SplitWriter._close_shard
def slow_close(self):
    real(self)
    print("closed", flush=True)
    time.sleep(0.4)
prepare.SplitWriter._close_shard = slow_close
prepare.prepare_dataset([sys.argv[1]], load_tokenizer("gpt2"), sys.argv[2], workers=1, shard_tokens=300,
                        valid_fraction=0.2, progress=False)
"""


def test_a_killed_prepare_continues_to_the_byte_identical_result(corpus_dir, tmp_path, monkeypatch):
    import longssm.data.prepare as prepare

    inputs = str(corpus_dir / "in")
    child = subprocess.Popen([sys.executable, "-c", KILLER, inputs, str(tmp_path / "killed")], stdout=subprocess.PIPE,
                             text=True)
    for _ in range(3):  # three shards complete, then kill -9 in the middle of the next
        assert child.stdout.readline().strip() == "closed"
    time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (tmp_path / "killed" / "progress.json").exists() and not (tmp_path / "killed" / "manifest.json").exists()
    with pytest.raises(UserError, match="unfinished prepare: rerun"):
        open_prepared(str(tmp_path / "killed"), load_tokenizer("gpt2"), "train")
    monkeypatch.setattr(prepare, "BATCH_CHARS", 800)
    kwargs = {"workers": 1, "shard_tokens": 300, "valid_fraction": 0.2, "progress": False}
    resumed = prepare_dataset([inputs], load_tokenizer("gpt2"), tmp_path / "killed", **kwargs)
    clean = prepare_dataset([inputs], load_tokenizer("gpt2"), tmp_path / "clean", **kwargs)
    assert resumed.resumed_shards >= 3 and resumed.input_bytes < clean.input_bytes  # done shards not redone
    assert tree(tmp_path / "killed") == tree(tmp_path / "clean")


def test_valid_fraction_limit_and_separate_valid_inputs(corpus_dir, tmp_path):
    tok = load_tokenizer("byte")
    inputs = [str(corpus_dir / "in")]
    n_docs = len(expected_tokens(inputs, tok, 0)[1])
    done = prepare_dataset(inputs, tok, tmp_path / "f", valid_fraction=0.34, progress=False)
    splits = done.manifest["splits"]
    held = [i for i in range(n_docs) if int((i + 1) * 0.34) > int(i * 0.34)]
    assert splits["valid"]["documents"] == len(held) and splits["train"]["documents"] == n_docs - len(held)
    valid = load_corpus(str(tmp_path / "f"), tok, role="valid")
    train = load_corpus(str(tmp_path / "f"), tok, role="train")
    assert len(valid.tokens) == splits["valid"]["tokens"] and valid.digest != train.digest
    assert load_corpus(str(tmp_path / "f" / "valid"), tok).digest == valid.digest  # DIR/valid names the split
    limited = prepare_dataset(inputs, tok, tmp_path / "l", limit_tokens=1234, progress=False)
    assert limited.manifest["splits"]["train"]["tokens"] == 1234
    sep = prepare_dataset([str(corpus_dir / "in" / "c.txt")], tok, tmp_path / "s",
                          valid=[str(corpus_dir / "in" / "b.parquet")], progress=False)
    assert sep.manifest["splits"]["valid"]["documents"] == 3
    with pytest.raises(UserError, match="has no valid split"):
        load_corpus(str(tmp_path / "l"), tok, role="valid")


def test_a_vocabulary_over_65536_tokens_writes_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {chr(0x10000 + i): i for i in range(70_000 - 1)}
    vocab["<|endoftext|>"] = 70_000 - 1
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert tok.vocab_size == 70_000 and default_eos(tok) == 69_999
    text = "".join(chr(0x10000 + i) for i in (5, 66_000, 68_000))
    (tmp_path / "a.txt").write_text(text)
    done = prepare_dataset([str(tmp_path / "a.txt")], tok, tmp_path / "ds", progress=False)
    got = open_prepared(str(tmp_path / "ds"), tok, "train")
    assert done.manifest["dtype"] == "uint32" and got.tokens[:].tolist() == [5, 66_000, 68_000, 69_999]


def test_other_settings_and_foreign_directories_are_refused(corpus_dir, tmp_path):
    tok = load_tokenizer("byte")
    inputs = [str(corpus_dir / "in")]
    prepare_dataset(inputs, tok, tmp_path / "ds", progress=False)
    before = tree(tmp_path / "ds")
    with pytest.raises(UserError, match=r"other settings \(split \"none\" \u2260 \"wikitext\"\): use --overwrite"):
        prepare_dataset(inputs, tok, tmp_path / "ds", split="wikitext", progress=False)
    assert tree(tmp_path / "ds") == before
    prepare_dataset(inputs, tok, tmp_path / "ds", split="wikitext", overwrite=True, progress=False)
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["split"] == "wikitext"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="holds files longssm prepare did not write"):
            prepare_dataset(inputs, tok, tmp_path / "mine", overwrite=overwrite, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_a_second_prepare_into_a_directory_being_written_is_refused(corpus_dir, tmp_path):
    from longssm.lock import locked_dir

    with locked_dir(tmp_path / "ds", "--out"):
        proc = longssm("prepare", str(corpus_dir / "in"), "--out", str(tmp_path / "ds"), "--no-progress")
    assert_one_line_error(proc, "is in use by process", 2)


@pytest.mark.slow
def test_train_and_eval_read_a_prepared_dataset_and_resume_refuses_another(corpus_dir, tmp_path):
    ds = tmp_path / "ds"
    assert longssm("prepare", str(corpus_dir / "in"), "--out", str(ds), "--valid-fraction", "0.3",
                   "--no-progress").returncode == 0
    run = tmp_path / "run"
    common = ["--run-dir", str(run), "--no-progress", "--data.train", str(ds), "--data.valid", str(ds),
              "--model.d_model", "16", "--model.n_layers", "1", "--model.d_state", "4", "--train.seq_len", "8",
              "--train.batch_size", "4", "--train.warmup_steps", "1", "--train.eval_every", "3",
              "--train.checkpoint_every", "3", "--state.reset", "document"]
    proc = longssm("train", *common, "--train.steps", "3")
    assert proc.returncode == 0, proc.stderr
    ev = longssm("eval", str(run), "--data", str(ds), "--lengths", "16,64", "--json", str(tmp_path / "e.json"),
                 "--no-progress")
    assert ev.returncode == 0, ev.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["data"] == str(ds / "valid") and result["data_digest"].endswith("-valid")
    assert longssm("prepare", str(corpus_dir / "in" / "a.jsonl.zst"), "--out", str(ds), "--valid-fraction", "0.3",
                   "--overwrite", "--no-progress").returncode == 0  # the same path, another corpus
    before = file_hashes(run)
    resumed = longssm("train", *common, "--train.steps", "6", "--resume", "auto")
    assert_one_line_error(resumed, "is not the dataset this run was trained on", 2)
    assert file_hashes(run) == before
