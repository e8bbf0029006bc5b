"""Bad-input cases of issue 21 (prepared corpora), run by ``tests/test_bad_inputs.py`` like its own ``CASES``.

``CASES``: (case id, argv as a function of ``Inputs``, text the one error line must contain, exit code).
``make_inputs(root)``: writes the extra input files the cases need into ``root`` (``Inputs.root``), once per module.

The prepared datasets live under ``runs/``, which the test hashes around every case: a failing ``prepare``,
``train`` or ``eval`` changes none of them. ``prep_out`` is where the failing ``prepare`` cases would write.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def prepare(i, *args: str) -> list[str]:
    return ["prepare", *args, "--no-progress"]


def out(i) -> list[str]:
    return ["--out", i.path("prep_out")]


CASES: list[tuple[str, object, str, int]] = [
    ("prepare: a jsonl line that is not JSON", lambda i: prepare(i, i.path("bad.jsonl"), *out(i)),
     "bad.jsonl:2: not JSON", 2),
    ("prepare: a jsonl line without the text field", lambda i: prepare(i, i.path("nofield.jsonl"), *out(i)),
     "nofield.jsonl:1: no field 'text' (fields: body)", 2),
    ("prepare: an empty input", lambda i: prepare(i, i.path("empty.txt"), *out(i)), "the train split holds no text", 2),
    ("prepare: a glob that matches nothing", lambda i: prepare(i, i.path("*.nothing"), *out(i)), "no file matches", 2),
    ("prepare: into a directory of other files", lambda i: prepare(i, str(i.corpus), "--out", i.path("foreign")),
     "holds files longssm prepare did not write", 2),
    ("prepare: over a dataset of other settings", lambda i: prepare(i, str(i.corpus), "--split", "wikitext", "--out",
                                                                    i.run("ds_byte")),
     "other settings (split \"none\" \u2260 \"wikitext\"): use --overwrite", 2),
    ("prepare: --valid-fraction 1.5", lambda i: prepare(i, str(i.corpus), "--valid-fraction", "1.5", *out(i)),
     "--valid-fraction must be in [0, 1)", 2),
    ("prepare: --eos beyond the vocabulary", lambda i: prepare(i, str(i.corpus), "--eos", "300", *out(i)),
     "--eos 300 is not a token id", 2),
    ("train: an unfinished prepared dataset", lambda i: i.train("--data.train", i.run("ds_unfinished")),
     "is an unfinished prepare: rerun the same longssm prepare", 2),
    ("train: a truncated shard", lambda i: i.train("--data.train", i.run("ds_truncated")), "the manifest says", 2),
    ("train: a dataset of another tokenizer", lambda i: i.train("--data.train", i.run("ds_gpt2")),
     "was prepared with tokenizer 'gpt2'; this run's data.tokenizer is 'byte'", 2),
    ("train: a foreign manifest", lambda i: i.train("--data.train", i.run("ds_foreign")),
     "is not a longssm prepared dataset's manifest", 2),
    ("eval: a dataset without a valid split", lambda i: ["eval", i.run(), "--data", i.run("ds_byte")],
     "has no valid split", 2),
]
OUTPUTS: tuple[str, ...] = ("prep_out",)
"""Names under ``Inputs.root`` that the cases would write: each must still be absent after every case."""


def make_inputs(root: Path) -> None:
    """Bad jsonl files, a directory of someone else's file, and prepared datasets under runs/: complete (byte and
    GPT-2), unfinished, with a truncated shard, with a foreign manifest."""
    from longssm.data.prepare import prepare_dataset
    from longssm.data.tokenizer import load_tokenizer

    (root / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    (root / "nofield.jsonl").write_text('{"body": "no text field"}\n')
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("someone else's\n")
    runs, corpus = root / "runs", str(root / "corpus.txt")
    prepare_dataset([corpus], load_tokenizer("byte"), runs / "ds_byte", workers=1, progress=False)
    prepare_dataset([corpus], load_tokenizer("gpt2"), runs / "ds_gpt2", workers=1, progress=False)
    shutil.copytree(runs / "ds_byte", runs / "ds_truncated")
    shard = runs / "ds_truncated" / "train" / "tokens-00000.bin"
    shard.write_bytes(shard.read_bytes()[:1000])
    shutil.copytree(runs / "ds_byte", runs / "ds_unfinished")
    (runs / "ds_unfinished" / "manifest.json").unlink()
    (runs / "ds_unfinished" / "progress.json").write_text(json.dumps({"splits": {}}))
    shutil.copytree(runs / "ds_byte", runs / "ds_foreign")
    (runs / "ds_foreign" / "manifest.json").write_text(json.dumps({"format": "something else"}))
