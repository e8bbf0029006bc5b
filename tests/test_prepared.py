"""The prepared dataset reader (``data/prepared.py``), the stream loader over it (``data/streams.py``) and the
dispatch of ``load_corpus``. Prepared directories are written by hand here (numpy shards + a manifest), so these
tests do not depend on ``longssm prepare``."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from child_rss import SLACK_MB, kernel_measured, read_log
from conftest import assert_one_line_error, file_hashes, longssm, tiny_train_args, tiny_workdir
from longssm.data.corpus import load_corpus, split_documents
from longssm.data.prepared import TokenArray, is_prepared, open_prepared
from longssm.data.streams import Batch, StreamLoader
from longssm.data.tokenizer import load_tokenizer
from longssm.errors import UserError

BYTE = load_tokenizer("byte")


def write_split(root: Path, split: str, shards: list[np.ndarray], docs: np.ndarray, dtype: str = "uint16") -> dict:
    """Write ``shards`` and ``docs`` as split ``split`` of the prepared directory ``root``; its manifest entry."""
    (root / split).mkdir(parents=True, exist_ok=True)
    entries = []
    for i, shard in enumerate(shards):
        name = f"{split}/tokens-{i:05d}.bin"
        shard.astype(dtype).tofile(root / name)
        entries.append({"file": name, "tokens": len(shard),
                        "sha256": hashlib.sha256((root / name).read_bytes()).hexdigest()})
    np.save(root / split / "docs.npy", np.asarray(docs, dtype=np.int64))
    return {"tokens": sum(len(s) for s in shards), "documents": len(docs), "shards": entries}


def make_prepared(root: Path, splits: dict[str, tuple[list[np.ndarray], np.ndarray]], tokenizer=BYTE,
                  dtype: str = "uint16") -> Path:
    """A complete prepared directory holding ``splits`` (name -> (shards, document starts))."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = {"format": "longssm-prepared", "version": 1, "longssm": "test",
                "tokenizer": {"name": tokenizer.name, "identity": tokenizer.identity,
                              "vocab_size": tokenizer.vocab_size},
                "eos": None, "dtype": dtype, "split": "none", "text_field": "text", "sources": [], "valid": None,
                "limit_tokens": None, "shard_tokens": 1 << 28,
                "splits": {name: write_split(root, name, *split, dtype) for name, split in splits.items()}}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return root


def random_split(rng: np.random.Generator, n_shards: int = 3, vocab: int = 256) -> tuple[list[np.ndarray], np.ndarray]:
    lengths = rng.integers(0, 400, n_shards)
    lengths[0] = max(lengths[0], 1)
    shards = [rng.integers(0, vocab, n).astype(np.int64) for n in lengths]
    total = int(lengths.sum())
    docs = np.unique(np.concatenate([[0], rng.integers(1, total, rng.integers(0, 20))])) if total > 1 else np.zeros(1)
    return shards, docs


# ---------------------------------------------------------------------------------------------------- TokenArray


def test_token_array_slices_equal_the_concatenated_shards(tmp_path):
    rng = np.random.default_rng(0)
    shards = [rng.integers(0, 60000, n) for n in (7, 0, 1, 30, 0, 12)]  # empty shards too
    whole = np.concatenate(shards)
    root = make_prepared(tmp_path / "ds", {"train": (shards, np.array([0]))}, load_tokenizer("gpt2"))
    tokens = open_prepared(str(root), load_tokenizer("gpt2"), "train").tokens
    assert isinstance(tokens, TokenArray) and len(tokens) == len(whole) == 50 and tokens.dtype == np.uint16
    for a in range(-52, 53):
        for b in range(-52, 53):
            got = tokens[a:b]
            assert got.dtype == np.uint16 and np.array_equal(got, whole[a:b]), (a, b)
    assert np.array_equal(tokens[:], whole) and np.array_equal(tokens[10:], whole[10:])
    for i in (0, 6, 7, 8, 37, 49, -1, -50):
        assert tokens[i] == whole[i] and isinstance(tokens[i], int)
    for i in (50, -51):
        with pytest.raises(IndexError):
            tokens[i]
    with pytest.raises(ValueError):
        tokens[::2]


def test_token_array_opens_only_the_shards_it_reads(tmp_path):
    shards = [np.arange(10), np.arange(10, 20), np.arange(20, 30)]
    root = make_prepared(tmp_path / "ds", {"train": (shards, np.array([0]))})
    tokens = open_prepared(str(root), BYTE, "train").tokens
    (root / "train" / "tokens-00000.bin").unlink()  # never opened: a read of shards 1 and 2 does not need it
    assert np.array_equal(tokens[12:25], np.arange(12, 25))
    with pytest.raises(FileNotFoundError):
        tokens[5:12]


def test_uint32_shards(tmp_path):
    big = load_tokenizer("gpt2")
    big.identity, big.vocab_size = "hf-big", 100_000  # a vocabulary that does not fit uint16
    shards = [np.array([0, 70_000, 99_999]), np.array([65_536])]
    root = make_prepared(tmp_path / "ds", {"train": (shards, np.array([0, 2]))}, big, dtype="uint32")
    corpus = open_prepared(str(root), big, "train")
    assert corpus.tokens.dtype == np.uint32 and corpus.tokens[1:] .tolist() == [70_000, 99_999, 65_536]


# ------------------------------------------------------------------------------------------------- open_prepared


def two_split_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    return make_prepared(tmp_path / "ds", {"train": random_split(rng), "valid": random_split(rng, 1)})


def test_roles_pick_the_split_and_the_digest_is_the_manifest(tmp_path):
    root = two_split_dir(tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    sha = hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()[:20]
    for spec, role, split in [(root, "train", "train"), (root, "valid", "valid"), (root / "train", "valid", "train"),
                              (root / "valid", "train", "valid")]:
        corpus = open_prepared(str(spec), BYTE, role)
        assert len(corpus) == manifest["splits"][split]["tokens"], (spec, role)
        assert corpus.digest == f"{sha}-{split}" and corpus.source == str(root / split)
        assert np.array_equal(corpus.doc_starts, np.load(root / split / "docs.npy"))
        assert is_prepared(Path(spec))
    assert not is_prepared(tmp_path) and not is_prepared(root / "manifest.json")


def test_load_corpus_dispatches_on_what_it_is_given(tmp_path, wiki_text):
    root = two_split_dir(tmp_path)
    assert load_corpus(str(root), BYTE, tmp_path / "cache", role="valid").digest.endswith("-valid")
    npy = tmp_path / "t.npy"
    np.save(npy, np.arange(100, dtype=np.uint16))
    corpus = load_corpus(str(npy), BYTE, tmp_path / "cache")
    assert isinstance(corpus.tokens, np.memmap) and corpus.doc_starts.tolist() == [0]
    text = tmp_path / "wiki.txt"
    text.write_text(wiki_text[:20_000], encoding="utf-8")
    gpt2 = load_tokenizer("gpt2")
    corpus = load_corpus(str(text), gpt2, tmp_path / "cache", progress=False)
    assert isinstance(corpus.tokens, TokenArray) and (tmp_path / "cache" / Path(corpus.tokens.files[0]).parts[-3]
                                                      / "manifest.json").is_file()
    # today's tokens: every WikiText article tokenized on its own, concatenated, no separator
    articles = [gpt2.encode(doc) for doc in split_documents(text.read_text(encoding="utf-8"))]
    assert np.asarray(corpus.tokens).tolist() == [t for a in articles for t in a]
    assert corpus.doc_starts.tolist() == np.cumsum([0] + [len(a) for a in articles[:-1]]).tolist()
    # the digest of a text file is its content and tokenizer's, as before prepared caches
    assert corpus.digest == hashlib.sha256((hashlib.sha256(text.read_bytes()).hexdigest() + gpt2.identity)
                                           .encode()).hexdigest()[:20]


def rewrite_manifest(root: Path, change) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def _set(path: list, value):
    def change(manifest: dict) -> None:
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


DAMAGE = [
    ("unfinished", lambda r: ((r / "manifest.json").rename(r / "progress.json")),
     "ds is an unfinished prepare: rerun the same longssm prepare command to finish it"),
    ("no manifest", lambda r: (r / "manifest.json").rename(r / "other.json"), None),  # then: not a prepared dataset
    ("manifest not JSON", lambda r: (r / "manifest.json").write_text("{nope"), "is not a prepared dataset's manifest"),
    ("foreign format", lambda r: rewrite_manifest(r, _set(["format"], "nanogpt")),
     "is not a longssm prepared dataset's manifest"),
    ("future version", lambda r: rewrite_manifest(r, _set(["version"], 2)),
     "was prepared by another longssm (format version 2; this one reads 1): prepare it again"),
    ("other tokenizer", lambda r: rewrite_manifest(r, _set(["tokenizer"], {"name": "gpt2", "identity": "hf-x"})),
     "ds was prepared with tokenizer 'gpt2'; this run's data.tokenizer is 'byte'"),
    ("shard missing", lambda r: (r / "train" / "tokens-00001.bin").unlink(), "train/tokens-00001.bin is missing"),
    ("shard truncated", lambda r: (r / "train" / "tokens-00001.bin").write_bytes(b"\0" * 100),
     "train/tokens-00001.bin holds 100 bytes; the manifest says 20 (a truncated or foreign file: prepare again)"),
    ("shard too long", lambda r: (r / "train" / "tokens-00000.bin").write_bytes(b"\0" * 22),
     "holds 22 bytes; the manifest says 20"),
    ("shards do not add up", lambda r: rewrite_manifest(r, _set(["splits", "train", "tokens"], 41)),
     "the shards of split train hold 40 tokens, not its 41"),
    ("shard outside", lambda r: rewrite_manifest(r, _set(["splits", "train", "shards", 0, "file"], "../x.bin")),
     "shard entry '../x.bin' (10 tokens) is not a file of the dataset"),
    ("manifest damaged", lambda r: rewrite_manifest(r, _set(["splits", "train", "shards"], None)), "is damaged"),
    ("bad dtype", lambda r: rewrite_manifest(r, _set(["dtype"], "float32")), "token dtype float32"),
    ("docs missing", lambda r: (r / "train" / "docs.npy").unlink(), "cannot read the document index"),
    ("docs not npy", lambda r: (r / "train" / "docs.npy").write_bytes(b"junk"), "cannot read the document index"),
    ("docs int32", lambda r: np.save(r / "train" / "docs.npy", np.array([0, 5], np.int32)), "is not sorted int64"),
    ("docs 2-D", lambda r: np.save(r / "train" / "docs.npy", np.zeros((1, 1), np.int64)), "is not sorted int64"),
    ("docs unsorted", lambda r: np.save(r / "train" / "docs.npy", np.array([0, 9, 5])), "is not sorted int64"),
    ("docs past the end", lambda r: np.save(r / "train" / "docs.npy", np.array([0, 40])), "within the split's 40"),
    ("docs not from 0", lambda r: np.save(r / "train" / "docs.npy", np.array([3, 9])), "is not sorted int64"),
    ("docs empty", lambda r: np.save(r / "train" / "docs.npy", np.zeros(0, np.int64)), "is not sorted int64"),
]


@pytest.mark.parametrize("damage, needle", [(d, n) for _, d, n in DAMAGE], ids=[name for name, _, _ in DAMAGE])
def test_open_prepared_refuses_a_damaged_dataset(tmp_path, damage, needle):
    shards = [np.arange(10), np.arange(10), np.arange(20)]
    root = make_prepared(tmp_path / "ds", {"train": (shards, np.array([0, 12]))})
    assert len(open_prepared(str(root), BYTE, "train")) == 40  # intact, it opens
    damage(root)
    with pytest.raises(UserError) as e:
        open_prepared(str(root), BYTE, "train")
    message = str(e.value)
    assert "\n" not in message and (needle or "is not a prepared dataset (no manifest.json") in message, message


def test_no_valid_split(tmp_path):
    root = make_prepared(tmp_path / "ds", {"train": ([np.arange(10)], np.array([0]))})
    for spec in (root, root / "valid"):
        with pytest.raises(UserError, match=r"ds has no valid split \(prepare it with --valid-fraction or --valid, "
                                            r"or give .*ds/train\)"):
            open_prepared(str(spec), BYTE, "valid")
    with pytest.raises(UserError, match="is a directory but not a prepared dataset"):
        load_corpus(str(tmp_path), BYTE, tmp_path / "cache")


# --------------------------------------------------------------------------------------------------- StreamLoader


class OldStreamLoader:
    """The loader before prepared datasets (reference): the streams in memory and a per-token prefix sum of
    document starts, doc_reset[b] = cum[b, start] − cum[b, start − T] > 0."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, doc_starts: np.ndarray) -> None:
        self.batch_size, self.seq_len = batch_size, seq_len
        self.stream_len = len(tokens) // batch_size
        self.windows_per_epoch = (self.stream_len - 1) // seq_len
        self.streams = np.asarray(tokens[: batch_size * self.stream_len]).reshape(batch_size, self.stream_len)
        mark = np.zeros(batch_size * self.stream_len, dtype=np.int64)
        starts = doc_starts[(doc_starts > 0) & (doc_starts < len(mark))]
        mark[starts] = 1
        self._doc_cum = np.cumsum(mark.reshape(batch_size, self.stream_len), axis=1)

    def batch(self, step: int) -> tuple:
        epoch, j = divmod(step, self.windows_per_epoch)
        start = j * self.seq_len
        chunk = self.streams[:, start : start + self.seq_len + 1].astype(np.int64)
        if j > 0:
            doc = self._doc_cum[:, start] - self._doc_cum[:, start - self.seq_len]
        else:
            doc = np.zeros(self.batch_size, dtype=np.int64)
        return chunk[:, :-1], chunk[:, 1:], epoch, j == 0 and epoch > 0, doc > 0


def assert_same(new: Batch, old: tuple, step: int) -> None:
    x, y, epoch, wrapped, doc = old
    assert new.step == step and new.epoch == epoch and new.wrapped == wrapped, step
    assert new.x.dtype == torch.int64 and np.array_equal(new.x.numpy(), x) and np.array_equal(new.y.numpy(), y), step
    assert new.doc_reset.dtype == torch.bool and np.array_equal(new.doc_reset.numpy(), doc), step


@pytest.mark.parametrize("seed", range(12))
def test_stream_loader_equals_the_prefix_sum_formula(tmp_path, seed):
    rng = np.random.default_rng(seed)
    B, T = int(rng.integers(1, 9)), int(rng.integers(1, 12))
    n = int(rng.integers(B * (T + 1), B * (T + 1) * 6 + 50))
    whole = rng.integers(0, 256, n)
    # documents: dense, sparse, at stream boundaries, in the cut-off tail; doc_starts may hold duplicates
    docs = np.unique(np.concatenate([[0], rng.integers(1, n, int(rng.integers(0, n // 2 + 1))),
                                     np.arange(B) * (n // B), [n - 1]]))
    cuts = np.sort(rng.integers(0, n, 3))
    root = make_prepared(tmp_path / "ds", {"train": (np.split(whole, cuts), docs)})
    corpus = open_prepared(str(root), BYTE, "train")
    new, old = StreamLoader(corpus.tokens, B, T, corpus.doc_starts), OldStreamLoader(whole, B, T, docs)
    assert len(new) == old.windows_per_epoch
    resets = 0
    for step in range(2 * len(new) + 2):  # past two wraps
        batch = new.batch(step)
        assert_same(batch, old.batch(step), step)
        resets += int(batch.doc_reset.sum())
    assert np.array_equal(StreamLoader(whole, B, T, docs).batch(1).x, new.batch(1).x)  # a plain array too
    if len(docs) > B + 2 and len(new) > 2:
        assert resets > 0  # the comparison saw resets


class RecordingTokens:
    """A token array that records which ranges are read."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens, self.reads = tokens, []

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, key: slice) -> np.ndarray:
        self.reads.append((key.start, key.stop))
        return self.tokens[key]


def test_rows_are_the_full_batch_rows_and_only_they_are_read():
    rng = np.random.default_rng(3)
    B, T, n = 8, 5, 8 * 40 + 3
    docs = np.unique(rng.integers(0, n, 60))
    tokens = RecordingTokens(rng.integers(0, 256, n))
    loader = StreamLoader(tokens, B, T, docs)
    S = loader.stream_len
    for step in range(len(loader) + 3):
        full = loader.batch(step)
        for part in (slice(0, 2), slice(2, 4), slice(6, 8), slice(3, 4), slice(0, 8)):
            tokens.reads.clear()
            mine = loader.batch(step, rows=part)
            want = full.rows(part)
            assert torch.equal(mine.x, want.x) and torch.equal(mine.y, want.y), (step, part)
            assert torch.equal(mine.doc_reset, want.doc_reset) and mine.wrapped == want.wrapped
            rows = range(B)[part]
            assert len(tokens.reads) == len(rows)
            for (a, b), r in zip(tokens.reads, rows):
                assert r * S <= a and b <= (r + 1) * S and b - a == T + 1  # one window of its own stream


SCALE_CHILD = r"""
import json, sys, time
from longssm.data.corpus import load_corpus
from longssm.data.streams import StreamLoader
from longssm.data.tokenizer import load_tokenizer
tok = load_tokenizer("byte")
if sys.argv[2] == "work":
    t0 = time.perf_counter()
    corpus = load_corpus(sys.argv[1], tok, progress=False)
    loader = StreamLoader(corpus.tokens, 32, 2048, corpus.doc_starts)
    batches = [loader.batch(step) for step in range(len(loader) - 3, len(loader))]
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "tokens": len(corpus), "windows": len(loader),
                      "last_row": batches[-1].x[-1].tolist() + batches[-1].y[-1, -1:].tolist(),
                      "resets": [b.doc_reset.tolist() for b in batches]}))
"""


def test_ten_billion_tokens_in_constant_memory(tmp_path):
    """A sparse 10^10-token shard (no disk space) with a document index: opening it, building the loader and
    reading windows from its far end take < 1 s and < 100 MB more peak RSS than the same child that only imports."""
    n, B, T = 10**10, 32, 2048
    S = n // B
    W = (S - 1) // T
    last = (B - 1) * S + (W - 1) * T  # where the last window of the last stream starts
    root = tmp_path / "big"
    (root / "train").mkdir(parents=True)
    written = (np.arange(T + 1) % 200 + 1).astype(np.uint16)
    with open(root / "train" / "tokens-00000.bin", "wb") as f:
        f.truncate(2 * n)  # uint16 zeros that take no disk space
        f.seek(2 * last)
        f.write(written.tobytes())
    rng = np.random.default_rng(0)
    docs = np.unique(np.concatenate([[0], rng.integers(1, n, 100_000), [5 * S + (W - 1) * T - 7]])).astype(np.int64)
    np.save(root / "train" / "docs.npy", docs)
    manifest = {"format": "longssm-prepared", "version": 1, "tokenizer": {"name": "byte", "identity": "byte-v1"},
                "eos": None, "dtype": "uint16", "splits": {"train": {
                    "tokens": n, "documents": len(docs),
                    "shards": [{"file": "train/tokens-00000.bin", "tokens": n, "sha256": "not checked"}]}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    log = tmp_path / "rss.jsonl"
    out = {}
    for mode in ("baseline", "work"):
        proc = subprocess.run(kernel_measured([sys.executable, "-c", SCALE_CHILD, str(root), mode], log),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        out[mode] = proc.stdout
    baseline, work = (r["maxrss_mb"] for r in read_log(log))
    result = json.loads(out["work"])
    assert result["tokens"] == n and result["windows"] == W
    assert result["last_row"] == written.tolist()  # the far end was read, and exactly there
    rows = np.arange(B)[:, None] * S
    for k, resets in enumerate(result["resets"]):
        j = W - 3 + k
        want = ((docs[None, :] > rows + (j - 1) * T) & (docs[None, :] <= rows + j * T)).any(axis=1)
        assert resets == want.tolist(), j
    assert result["resets"][-1][5]
    assert result["seconds"] < 1.0, result
    assert work - baseline < 100 + SLACK_MB, (baseline, work)


# -------------------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("kind", ["prepared", "text"])
def test_resume_on_another_dataset_is_refused(tmp_path_factory, wiki_text, kind):
    work = tiny_workdir(tmp_path_factory, wiki_text, f"resume_{kind}")
    data = work / "corpus.txt"
    if kind == "prepared":
        ids = np.frombuffer(data.read_bytes(), dtype=np.uint8).astype(np.int64)
        data = make_prepared(work / "ds", {"train": ([ids[:8000], ids[8000:15000]], np.array([0, 5000])),
                                           "valid": ([ids[15000:]], np.array([0]))})
    run = work / "run"
    first = longssm(*tiny_train_args(data, work / "cache", run))
    assert first.returncode == 0, first.stderr
    again = longssm(*tiny_train_args(data, work / "cache", run, "--resume", "auto", "--train.steps", "8"))
    assert again.returncode == 0 and "resumed from" in again.stderr, again.stderr  # the same data resumes
    if kind == "prepared":  # prepared again at the same path, from other text
        make_prepared(data, {"train": ([ids[100:15000]], np.array([0])), "valid": ([ids[15000:]], np.array([0]))})
    else:
        data.write_text(wiki_text[1000:21_000], encoding="utf-8")
    before = file_hashes(run)
    refused = longssm(*tiny_train_args(data, work / "cache", run, "--resume", "auto", "--train.steps", "10"))
    assert_one_line_error(refused, f"data.train {data} is not the dataset this run was trained on (manifest ", 2)
    assert " ≠ " in refused.stderr and file_hashes(run) == before
