"""Throughput and memory of ``longssm prepare``, and the memory of training on what it wrote, vs corpus size.

    python benchmarks/data_prepare.py [--json OUT.json] [--quick] [--sizes-mb 100,1000] [--tokenizers gpt2,byte]
                                      [--input FILE] [--workers N] [--workdir DIR]

Corpora: the shipped WikiText-103 train prefix (2.9 MB) repeated to each of --sizes-mb, one text file each,
prepared with ``--split wikitext`` (a document per article); or --input, a user's own file or directory (then
one size: its own). Every measurement runs in a fresh child process, so no size's allocations hide another's:

    prepare   ``longssm.data.prepare.prepare_dataset`` with --workers processes: seconds, MB/s of input text,
              tokens/s, the peak RSS of the main process and of the largest worker (VmHWM / ru_maxrss)
    bare      the limit: the ``tokenizers`` library alone, ``encode_batch`` over the same documents in batches of
              the same text size, with --workers threads (RAYON_NUM_THREADS); only the encode calls are timed
              (reading the text is not); on the smallest corpus (all repeat the same text). GPT-2 BPE only: the
              byte tokenizer is a UTF-8 encode, no library.
    loader    the training loader over the prepared dataset: seconds and peak RSS of ``load_corpus`` + the
              ``StreamLoader`` (B=--batch-size, T=--seq-len), then of --train-steps steps of ``longssm train``
              (a tiny Mamba) reading it

Prints one JSON object: prepare.<tokenizer>.<size>, bare.gpt2.<size>, loader.<tokenizer>.<size>, each a record
or "skipped: reason"; ratios.prepare.<tokenizer>.<size>."prepare/bare" (GPT-2), ratios.memory.<tokenizer>:
the largest size's peak RSS over the smallest's for prepare (main + largest worker) and for training, and
loader.<tokenizer>.<size>.build_seconds; then notes. The generated corpora and datasets are deleted at the end
unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

SHIPPED = "builtin:wikitext-103/wiki.train.prefix.tokens"
BATCH_CHARS = 1 << 22
NOTES = [
    "corpora: the shipped WikiText-103 train prefix repeated to each size (or --input), split into articles "
    "(--split wikitext); every figure from a fresh child process",
    "prepare: prepare_dataset with --workers worker processes; peak_rss_mb = VmHWM of the main process, "
    "workers_peak_rss_mb = ru_maxrss of the largest worker",
    "bare: tokenizers' encode_batch alone on the same documents in batches of the same size, RAYON_NUM_THREADS = "
    "--workers; only the encode calls timed; measured on the smallest corpus (every corpus repeats the same text) "
    "and every size's prepare/bare ratio divides by it",
    "loader: load_corpus + StreamLoader over the prepared dataset (build_seconds, build_peak_rss_mb), then "
    "longssm train of a tiny Mamba for --train-steps steps (train_peak_rss_mb: VmHWM of that process)",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.BenchParser(__doc__)
    parser.add_sized("--sizes-mb", [100, 1000], [1, 4], type=common.int_list, help="generated corpus sizes, MB")
    parser.add_names("--tokenizers", ["gpt2", "byte"], "tokenizers")
    parser.add_argument("--input", help="a user's own corpus (file, directory or glob) instead of generated ones")
    parser.add_argument("--split", default=None, help="--split of prepare (default: wikitext for the generated "
                        "corpora, none for --input)")
    parser.add_sized("--workers", os.cpu_count() or 1, 2, type=int, help="prepare's worker processes")
    parser.add_sized("--train-steps", 100, 5, type=int, help="training steps read from the prepared dataset")
    parser.add_argument("--batch-size", type=int, default=32, help="training streams B")
    parser.add_argument("--seq-len", type=int, default=16, help="training window T")
    parser.add_argument("--workdir", type=Path, help="where corpora and datasets go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the generated corpora and datasets")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# Children: one measurement each, in a fresh process.


def _workers_peak_mb() -> float:
    """ru_maxrss of the largest waited-for child process (the prepare workers), MB."""
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def child_prepare(spec: dict[str, Any]) -> dict[str, Any]:
    from longssm.data.prepare import prepare_dataset
    from longssm.data.sources import find_sources
    from longssm.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(spec["tokenizer"])
    size = sum(source.size for source in find_sources(spec["inputs"]))
    started = time.perf_counter()
    manifest = prepare_dataset(spec["inputs"], tokenizer, spec["out"], split=spec["split"], workers=spec["workers"],
                               progress=False).manifest
    seconds = time.perf_counter() - started
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    return {"seconds": seconds, "input_mb": size / 1e6, "mb_per_s": size / 1e6 / seconds,
            "tokens": tokens, "tokens_per_s": tokens / seconds,
            "documents": sum(s["documents"] for s in manifest["splits"].values()),
            "peak_rss_mb": common.peak_rss_mb(), "workers_peak_rss_mb": _workers_peak_mb()}


def child_bare(spec: dict[str, Any]) -> dict[str, Any]:
    os.environ["RAYON_NUM_THREADS"] = str(spec["workers"])
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    from longssm.data.sources import find_sources, iter_pieces
    from longssm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(spec["tokenizer"])._tok
    size, tokens, seconds = 0, 0, 0.0
    batch: list[str] = []
    chars = 0

    def encode() -> None:
        nonlocal tokens, seconds
        started = time.perf_counter()
        tokens += sum(len(e.ids) for e in tok.encode_batch(batch, add_special_tokens=False))
        seconds += time.perf_counter() - started

    for piece in iter_pieces(find_sources(spec["inputs"]), split=spec["split"]):
        batch.append(piece.text)
        chars += len(piece.text)
        size += len(piece.text.encode("utf-8"))
        if chars >= BATCH_CHARS:
            encode()
            batch, chars = [], 0
    if batch:
        encode()
    return {"seconds": seconds, "mb_per_s": size / 1e6 / seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def child_loader(spec: dict[str, Any]) -> dict[str, Any]:
    from longssm.cli import main as cli_main
    from longssm.data.corpus import load_corpus
    from longssm.data.streams import StreamLoader
    from longssm.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(spec["tokenizer"])
    started = time.perf_counter()
    corpus = load_corpus(spec["data"], tokenizer, progress=False)
    loader = StreamLoader(corpus.tokens, spec["batch_size"], spec["seq_len"], corpus.doc_starts)
    last = loader.batch(len(loader) - 1)  # the far end of every stream
    build = time.perf_counter() - started
    assert last.x.shape == (spec["batch_size"], spec["seq_len"])
    build_rss = common.peak_rss_mb()
    started = time.perf_counter()
    vocab = 256 if spec["tokenizer"] == "byte" else tokenizer.vocab_size
    args = ["train", "--run-dir", spec["run_dir"], "--data.train", spec["data"], "--data.tokenizer", spec["tokenizer"],
            "--model.family", "mamba", "--model.d_model", "32", "--model.n_layers", "1", "--model.vocab_size",
            str(-(-vocab // 8) * 8), "--train.steps", str(spec["steps"]), "--train.batch_size",
            str(spec["batch_size"]), "--train.seq_len", str(spec["seq_len"]), "--train.eval_every", "0",
            "--train.warmup_steps", "0", "--no-progress"]
    try:
        cli_main(args)
    except SystemExit as e:
        if e.code:
            raise
    return {"tokens": len(corpus.tokens), "documents": len(corpus.doc_starts), "build_seconds": build,
            "build_peak_rss_mb": build_rss, "train_seconds": time.perf_counter() - started,
            "train_peak_rss_mb": common.peak_rss_mb()}


CHILDREN = {"prepare": child_prepare, "bare": child_bare, "loader": child_loader}


# ----------------------------------------------------------------------------------------------------------
# The parent.


def make_corpus(path: Path, size_mb: int) -> None:
    """The shipped train prefix repeated until the file holds ``size_mb`` MB (whole copies, then a cut at a line)."""
    from longssm.paths import resolve_path

    text = resolve_path(SHIPPED).read_bytes()
    target = size_mb * 1_000_000
    with open(path, "wb") as f:
        written = 0
        while written + len(text) <= target:
            f.write(text)
            written += len(text)
        rest = text[: max(0, target - written)]
        f.write(rest[: rest.rfind(b"\n") + 1])


def _run(kind: str, spec: dict[str, Any], label: str) -> dict[str, Any] | str:
    record = common.run_child([sys.executable, __file__, "--child", json.dumps({"kind": kind, **spec})],
                              timeout=7200)
    common.progress(label, record if isinstance(record, dict) else {"": record})
    return record


def _peak(record: Any, *keys: str) -> float | None:
    return sum(record[k] for k in keys) if isinstance(record, dict) else None


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """prepare, bare, loader, ratios and notes (see the module docstring)."""
    corpora: dict[str, list[str]] = {}
    if args.input:
        corpora["input"] = [args.input]
    for mb in [] if args.input else args.sizes_mb:
        path = work / f"corpus-{mb}MB.txt"
        make_corpus(path, mb)
        corpora[f"{mb}MB"] = [str(path)]
    split = args.split or ("none" if args.input else "wikitext")
    prepare: dict[str, Any] = {}
    bare: dict[str, Any] = {}
    loader: dict[str, Any] = {}
    ratios: dict[str, Any] = {"prepare": {}, "memory": {}}
    for name in args.tokenizers:
        prepare[name], loader[name], ratios["prepare"][name] = {}, {}, {}
        for size, inputs in corpora.items():
            out = work / f"{name}-{size}"
            spec = {"tokenizer": name, "inputs": inputs, "split": split, "workers": args.workers}
            prepare[name][size] = _run("prepare", {**spec, "out": str(out)}, f"prepare {name} {size}")
            if name == "gpt2" and not bare:  # the limit, once: every corpus is the same text repeated
                bare[name] = {size: _run("bare", spec, f"bare tokenizers {name} {size}")}
            if name == "gpt2":
                limit = next(iter(bare[name].values()))
                ratios["prepare"][name][size] = {"prepare/bare": common.ratio(
                    _peak(prepare[name][size], "mb_per_s"), _peak(limit, "mb_per_s"))}
            loader[name][size] = _run("loader", {"tokenizer": name, "data": str(out), "batch_size": args.batch_size,
                                                 "seq_len": args.seq_len, "steps": args.train_steps,
                                                 "run_dir": str(work / f"run-{name}-{size}")}, f"loader {name} {size}")
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
        if len(corpora) > 1:
            names = list(corpora)
            small, large = names[0], names[-1]
            ratios["memory"][name] = {
                f"prepare_peak_rss_{large}/{small}": common.ratio(
                    _peak(prepare[name][large], "peak_rss_mb", "workers_peak_rss_mb"),
                    _peak(prepare[name][small], "peak_rss_mb", "workers_peak_rss_mb")),
                f"train_peak_rss_{large}/{small}": common.ratio(_peak(loader[name][large], "train_peak_rss_mb"),
                                                                _peak(loader[name][small], "train_peak_rss_mb")),
                f"loader_build_peak_rss_{large}/{small}": common.ratio(
                    _peak(loader[name][large], "build_peak_rss_mb"), _peak(loader[name][small], "build_peak_rss_mb")),
            }
    return {"prepare": prepare, "bare": bare, "loader": loader, "ratios": ratios, "notes": NOTES}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        common.set_threads(1)
        print(json.dumps(CHILDREN[spec.pop("kind")](spec)))
        return {}
    work = args.workdir or Path(tempfile.mkdtemp(prefix="longssm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    config = {"sizes_mb": args.sizes_mb if not args.input else None, "input": args.input,
              "tokenizers": args.tokenizers, "workers": args.workers, "train_steps": args.train_steps,
              "batch_size": args.batch_size, "seq_len": args.seq_len}
    try:
        return common.report(args, "data_prepare", config, lambda: measure(args, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
