"""Bad-input cases of issue 20 (config), run by ``tests/test_bad_inputs.py`` like its own ``CASES``.

``CASES``: (case id, argv as a function of ``Inputs``, text the one error line must contain, exit code).
``make_inputs(root)``: writes the extra input files the cases need into ``root`` (``Inputs.root``), once per module.

Every documented range is enforced by the config (optimizer betas in [0, 1), seeds in [0, 2^32 - 1]); no float
key takes a value that is not finite (``1e400`` reads as inf; ``inf``, ``nan``, YAML's ``.inf``); ``name`` is a
plain name; ``--print-config`` validates what it prints; the options of ``generate``, ``lm-eval`` and ``plot``
that a value breaks (a prompt file that is not UTF-8, ``--limit 0``, a result with no finite perplexity).
"""

from __future__ import annotations

import json
from pathlib import Path

FINITE = "must be a finite number; got "
PLAIN = "--name must be a plain name (no path separators, not empty); got "
LIMIT = "--limit must be > 0 (a count, or a fraction below 1)"

CASES: list[tuple[str, object, str, int]] = [
    # optimizer betas: [0, 1), as the help says
    ("beta1 = 1", lambda i: i.train("--train.beta1", "1.0"), "--train.beta1 must be in [0, 1); got 1.0", 2),
    ("beta1 < 0", lambda i: i.train("--train.beta1", "-0.1"), "--train.beta1 must be in [0, 1); got -0.1", 2),
    ("beta2 = 1", lambda i: i.train("--train.beta2", "1"), "--train.beta2 must be in [0, 1); got 1.0", 2),
    ("beta2 < 0", lambda i: i.train("--train.beta2", "-0.1"), "--train.beta2 must be in [0, 1); got -0.1", 2),
    ("YAML beta1: 1", lambda i: i.train("--config", i.path("beta_one.yaml")), "train.beta1 must be in [0, 1)", 2),
    # numbers that are not finite
    ("lr 1e400", lambda i: i.train("--train.lr", "1e400"), "--train.lr " + FINITE + "inf", 2),
    ("lr inf", lambda i: i.train("--train.lr", "inf"), "--train.lr " + FINITE + "inf", 2),
    ("lr nan", lambda i: i.train("--train.lr", "nan"), "--train.lr " + FINITE + "nan", 2),
    ("lr -inf", lambda i: i.train("--train.lr", "-inf"), "--train.lr " + FINITE + "-inf", 2),
    ("weight_decay inf", lambda i: i.train("--train.weight_decay", "inf"), "--train.weight_decay " + FINITE + "inf", 2),
    ("grad_clip 1e999", lambda i: i.train("--train.grad_clip", "1e999"), "--train.grad_clip " + FINITE + "inf", 2),
    ("noise_std nan", lambda i: i.train("--state.noise_std", "nan"), "--state.noise_std " + FINITE + "nan", 2),
    ("p_zero inf (optional)", lambda i: i.train("--state.p_zero", "inf"), "--state.p_zero " + FINITE + "inf", 2),
    ("delta_scale with inf", lambda i: i.train("--model.delta_scale", "inf"),
     "every value of --model.delta_scale " + FINITE, 2),
    ("YAML lr: .inf", lambda i: i.train("--config", i.path("inf_lr.yaml")), "train.lr " + FINITE + "inf", 2),
    ("YAML lr: 10^400 (an integer)", lambda i: i.train("--config", i.path("huge_lr.yaml")),
     "train.lr " + FINITE + "inf", 2),
    ("YAML lr: .nan", lambda i: i.train("--config", i.path("nan_lr.yaml")), "train.lr " + FINITE + "nan", 2),
    # seeds
    ("train seed < 0", lambda i: i.train("--train.seed", "-1"), "--train.seed must be in [0, 4294967295]; got -1", 2),
    ("train seed 2^64", lambda i: i.train("--train.seed", str(2**64)), "--train.seed must be in [0, 4294967295]", 2),
    ("eval seed < 0", lambda i: ["eval", i.run(), "--seed", "-1"], "--seed must be in [0, 4294967295]; got -1", 2),
    ("generate seed 2^70", lambda i: ["generate", i.run(), "--prompt", "a", "--seed", str(2**70)],
     "--seed must be in [0, 4294967295]", 2),
    # names
    ("name empty", lambda i: i.train("--name", ""), PLAIN + "''", 2),
    ("name ../../x", lambda i: i.train("--name", "../../x"), PLAIN + "'../../x'", 2),
    ("name a/b", lambda i: i.train("--name", "a/b"), PLAIN + "'a/b'", 2),
    ("name .", lambda i: i.train("--name", "."), PLAIN + "'.'", 2),
    ("name ..", lambda i: i.train("--name", ".."), PLAIN + "'..'", 2),
    ("name a\\b", lambda i: i.train("--name", "a\\b"), PLAIN + "'a\\\\b'", 2),
    ("name with a newline", lambda i: i.train("--name", "a\nb"), PLAIN + "'a\\nb'", 2),
    ("name of 256 bytes", lambda i: i.train("--name", "n" * 256),
     "--name must be a plain name of at most 255 bytes (a file name); got 256 bytes", 2),
    ("YAML name: ../x", lambda i: i.train("--config", i.path("name_up.yaml")), "name must be a plain name", 2),
    ("data.cache_dir empty", lambda i: i.train("--data.cache_dir", ""), "--data.cache_dir must be a directory or null",
     2),
    # --print-config validates what it would print
    ("print-config beta1 = 1", lambda i: i.train("--print-config", "--train.beta1", "1.0"),
     "--train.beta1 must be in [0, 1)", 2),
    ("print-config lr 1e400", lambda i: i.train("--print-config", "--train.lr", "1e400"), "--train.lr " + FINITE, 2),
    ("print-config name a/b", lambda i: i.train("--print-config", "--name", "a/b"), PLAIN + "'a/b'", 2),
    # generate
    ("generate prompt file not UTF-8", lambda i: ["generate", i.run(), "--prompt-file", i.path("latin1.txt")],
     "latin1.txt is not UTF-8 text", 2),
    ("generate prompt file missing", lambda i: ["generate", i.run(), "--prompt-file", i.path("no_prompt.txt")],
     "no_prompt.txt not found", 2),
    ("generate prompt file a directory", lambda i: ["generate", i.run(), "--prompt-file", i.path("a_directory")],
     "a_directory is a directory, not a text file", 2),
    ("generate temperature inf", lambda i: ["generate", i.run(), "--prompt", "a", "--temperature", "inf"],
     "--temperature " + FINITE + "inf", 2),
    ("generate top-p nan", lambda i: ["generate", i.run(), "--prompt", "a", "--top-p", "nan"], "--top-p " + FINITE, 2),
    # lm-eval
    ("lm-eval --limit 0", lambda i: ["lm-eval", i.run(), "--tasks", "x", "--limit", "0"], LIMIT + "; got 0", 2),
    ("lm-eval --limit -1", lambda i: ["lm-eval", i.run(), "--tasks", "x", "--limit", "-1"], LIMIT + "; got -1", 2),
    ("lm-eval --limit nan", lambda i: ["lm-eval", i.run(), "--tasks", "x", "--limit", "nan"], "--limit " + FINITE, 2),
    # plot / compare of a result without one finite perplexity
    ("plot: no finite perplexity", lambda i: ["plot", i.path("not_finite.json"), "--out", i.path("nf.png")],
     "not_finite.json has no finite perplexity to plot", 2),
    ("compare: no finite perplexity", lambda i: ["compare", i.path("not_finite.json"), "--out", i.path("nf_cmp")],
     "no finite perplexity to plot for", 2),
]
OUTPUTS: tuple[str, ...] = ("nf.png", "nf.csv", "nf_cmp")
"""Names under ``Inputs.root`` that the cases would write: each must still be absent after every case."""


def make_inputs(root: Path) -> None:
    """The YAML configs and the eval result of the cases."""
    (root / "beta_one.yaml").write_text("train:\n  beta1: 1\n")
    (root / "inf_lr.yaml").write_text("train:\n  lr: .inf\n")
    (root / "nan_lr.yaml").write_text("train:\n  lr: .nan\n")
    (root / "huge_lr.yaml").write_text("train:\n  lr: 1" + "0" * 400 + "\n")
    (root / "name_up.yaml").write_text("name: ../x\n")
    (root / "not_finite.json").write_text(json.dumps({"ppl_vs_length": {"8": float("nan"), "16": float("inf")},
                                                      "train_seq_len": 8}))
