"""Bad-input cases of issue 20 (outputs: nothing overwrites what it did not write), run by ``tests/test_bad_inputs.py``
like its own ``CASES``.

``CASES``: (case id, argv as a function of ``Inputs``, text the one error line must contain, exit code).
``make_inputs(root)``: writes the extra input files the cases need into ``root`` (``Inputs.root``), once per module.

Every output path here names a file of the run ``done`` or one of the user's own files, which ``make_inputs`` keeps
under ``runs/outputs/`` so that the suite's sha256 of every file under ``runs/`` covers them too; a refused output
leaves each of them, and the runs, byte for byte as they were (see ``longssm/outputs.py`` for the rules).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CKPT = "/checkpoints/step-00000006"
EVAL = ("--lengths", "8", "--no-progress")


def own(i, name: str) -> str:
    """A user's path under ``runs/outputs/`` (hashed around every case)."""
    return str(i.runs / "outputs" / name)


def evaluate(i, *extra: str) -> list[str]:
    """``longssm eval`` of the run ``done`` at one short length, with ``extra``."""
    return ["eval", i.run(), *EVAL, *extra]


def calibrate(i, out: str) -> list[str]:
    return ["calibrate", i.run(), "--method", "delta_scale", "--target-length", "8", "--data", str(i.corpus),
            "--steps", "1", "--out", out]


INSIDE = "inside the checkpoint"
FOREIGN = "a file longssm did not write: give --force"
CASES: list[tuple[str, object, str, int]] = [
    # inside a run or a checkpoint: refused always, --force or not
    ("eval --json into final/config.yaml", lambda i: evaluate(i, "--json", i.run() + "/final/config.yaml"),
     f"/done/final/config.yaml is {INSIDE} ", 2),
    ("eval --json into a checkpoint's meta.json", lambda i: evaluate(i, "--json", i.run() + CKPT + "/meta.json"),
     f"{INSIDE} ", 2),
    ("eval --json into final/, --force", lambda i: evaluate(i, "--json", i.run() + "/final/r.json", "--force"),
     INSIDE, 2),
    ("eval --json onto the run's metrics.jsonl", lambda i: evaluate(i, "--json", i.run() + "/metrics.jsonl"),
     "'s own metrics.jsonl", 2),
    ("eval --json onto the run's config.yaml, --force",
     lambda i: evaluate(i, "--json", i.run() + "/config.yaml", "--force"), "'s own config.yaml", 2),
    ("eval --json onto the run's run.json", lambda i: evaluate(i, "--json", i.run() + "/run.json"), "own run.json", 2),
    ("eval --json through a link into final/", lambda i: evaluate(i, "--json", own(i, "link.json")), INSIDE, 2),
    ("eval --json onto a ledger", lambda i: evaluate(i, "--json", own(i, ".longssm-outputs.json"), "--force"),
     "record of the files it wrote", 2),
    ("eval --plots into final/", lambda i: evaluate(i, "--plots", i.run() + "/final"), "is the checkpoint", 2),
    ("eval --plots into checkpoints/", lambda i: evaluate(i, "--plots", i.run() + "/checkpoints/plots"),
     "where the run", 2),
    ("eval --cache-dir inside final/", lambda i: evaluate(i, "--cache-dir", i.run() + "/final/cache"), INSIDE, 2),
    ("plot --out into checkpoints/", lambda i: ["plot", i.path("result.json"), "--out", i.run() + CKPT + "/p.png"],
     INSIDE, 2),
    ("compare --out into final/", lambda i: ["compare", i.path("result.json"), "--out", i.run() + "/final/cmp"],
     INSIDE, 2),
    ("lm-eval --output into final/", lambda i: ["lm-eval", i.run(), "--tasks", "x", "--output",
                                                i.run() + "/final/lm.json"], INSIDE, 2),
    ("export --out inside checkpoints/", lambda i: ["export", i.run(), "--out", i.run() + "/checkpoints/hf"],
     "where the run", 2),
    ("export --out onto the run's config.yaml", lambda i: ["export", i.run(), "--out", i.run() + "/config.yaml"],
     "own config.yaml", 2),
    ("import --out inside final/", lambda i: ["import", i.path("a_directory"), "--out", i.run() + "/final/imp"],
     INSIDE, 2),
    ("calibrate --out inside checkpoints/", lambda i: calibrate(i, i.run() + "/checkpoints/cal"), "where the run", 2),
    ("calibrate --out an existing directory", lambda i: calibrate(i, own(i, "cmp")), "cmp exists; choose a new", 2),
    # the user's own files: refused unless --force
    ("eval --json onto a foreign file", lambda i: evaluate(i, "--json", own(i, "mine.json")), FOREIGN, 2),
    ("eval --json whose .md report is foreign", lambda i: evaluate(i, "--json", own(i, "report.json")),
     f"outputs/report.md, {FOREIGN}", 2),
    ("eval --json onto an edited output", lambda i: evaluate(i, "--json", own(i, "edited.json")),
     "a file changed since longssm wrote it", 2),
    ("eval --json onto a foreign link", lambda i: evaluate(i, "--json", own(i, "mine_link.json")),
     "a symbolic link longssm did not write", 2),
    ("eval --json ending in .md", lambda i: evaluate(i, "--json", own(i, "result.md")), "ends in .md", 2),
    ("eval --json onto a directory", lambda i: evaluate(i, "--json", own(i, "cmp")), "is a directory", 2),
    ("eval --plots onto a foreign plot", lambda i: evaluate(i, "--plots", own(i, "plots"), "--no-cache"),
     f"ppl_vs_length.png, {FOREIGN}", 2),
    ("eval --plots onto a file", lambda i: evaluate(i, "--plots", own(i, "mine.json")), "mine.json is a file", 2),
    ("plot --out onto a foreign png", lambda i: ["plot", i.path("result.json"), "--out", own(i, "mine.png")],
     f"mine.png, {FOREIGN}", 2),
    ("plot --out whose .csv is foreign", lambda i: ["plot", i.path("result.json"), "--out", own(i, "table.png")],
     f"table.csv, {FOREIGN}", 2),
    ("compare --out onto a foreign compare.md", lambda i: ["compare", i.path("result.json"), "--out", own(i, "cmp")],
     f"compare.md, {FOREIGN}", 2),
    ("lm-eval --output onto a foreign file", lambda i: ["lm-eval", i.run(), "--tasks", "x", "--output",
                                                        own(i, "mine.json")], FOREIGN, 2),
]
OUTPUTS: tuple[str, ...] = ()
"""Names under ``Inputs.root`` that the cases would write: each must still be absent after every case (every case
here writes under ``runs/``, whose hashes the suite compares)."""


def make_inputs(root: Path) -> None:
    """The user's own files under ``runs/outputs/``: foreign files, a foreign ``.md`` beside a JSON name, an output
    longssm wrote (listed in the ledger) that was edited since, links, a directory with a foreign ``compare.md``
    and one with a foreign plot."""
    mine = root / "runs" / "outputs"
    (mine / "cmp").mkdir(parents=True)
    (mine / "plots").mkdir()
    for name in ("mine.json", "report.md", "mine.png", "table.csv", "cmp/compare.md", "plots/ppl_vs_length.png"):
        (mine / name).write_text(f"the user's own {name}\n")
    (mine / "edited.json").write_text("{}\n")
    ledger = {"format": 1, "files": {"edited.json": hashlib.sha256(b"{ }\n").hexdigest()}}  # another content
    (mine / ".longssm-outputs.json").write_text(json.dumps(ledger))
    os.symlink(root / "runs" / "done" / "final" / "config.yaml", mine / "link.json")
    os.symlink(mine / "mine.json", mine / "mine_link.json")

