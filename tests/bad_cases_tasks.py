"""Bad-input cases of issue 25 (the long-context tasks as metrics and as training data), run by
``tests/test_bad_inputs.py`` like its own ``CASES``: (case id, argv as a function of ``Inputs``, text the one error
line must contain, exit code)."""

from __future__ import annotations

from pathlib import Path


def eval_task(i, metric: str, *extra: str) -> list[str]:
    return ["eval", i.run(), "--metrics", metric, "--lengths", "64", "--max-tokens", "256", *extra]


CASES: list[tuple[str, object, str, int]] = [
    ("mqar: a length too short for the pairs", lambda i: eval_task(i, "mqar", "--task-lengths", "16"),
     "mqar: length 16 is too short for the task's content", 2),
    ("niah_multikey: a length too short for its needles",
     lambda i: eval_task(i, "niah_multikey", "--task-lengths", "100"), "niah_multikey: length 100 is too short", 2),
    ("a haystack file shorter than the length",
     lambda i: eval_task(i, "variable_tracking", "--task-haystack", i.path("short.txt"), "--task-lengths", "4096"),
     "has 25 tokens, fewer than the", 2),
    ("a haystack file that does not exist",
     lambda i: eval_task(i, "copy", "--task-haystack", i.path("no_haystack.txt")), "haystack file not found", 2),
    ("more mqar pairs than one-letter keys",
     lambda i: eval_task(i, "mqar", "--mqar-pairs", "30", "--mqar-key-letters", "1", "--task-lengths", "1024"),
     "30 mqar keys cannot be distinct: only 26 exist", 2),
    ("more niah needles than one-letter keys",
     lambda i: eval_task(i, "niah_multikey", "--niah-needles", "27", "--niah-key-letters", "1",
                         "--task-lengths", "8192"), "27 needle keys cannot be distinct: only 26 exist", 2),
    ("copy fraction above one half", lambda i: eval_task(i, "copy", "--copy-fractions", "0.7"),
     "--copy-fractions", 2),
    ("synthetic data: an unknown task", lambda i: i.train("--data.train", "synthetic:nope"),
     "unknown task 'nope'; known: mqar, copy", 2),
    ("synthetic data: an unknown task key", lambda i: i.train("--data.train", "synthetic:mqar?bogus=1"),
     "task mqar has no setting bogus", 2),
    ("synthetic data: a length too short", lambda i: i.train("--data.train", "synthetic:mqar?length=20"),
     "mqar: length 20 is too short for the task's content", 2),
    ("synthetic data: a length that is not a number",
     lambda i: i.train("--data.train", "synthetic:copy?length=long"), "length must be an integer; got 'long'", 2),
    ("synthetic data: a setting without a value", lambda i: i.train("--data.train", "synthetic:copy?letters"),
     "task settings are key=value pairs", 2),
    ("synthetic data: a depth outside [0, 1]",
     lambda i: i.train("--data.train", "synthetic:variable_tracking?depth=2"), "depth must be in [0, 1]; got 2", 2),
    ("synthetic data: more pairs than keys",
     lambda i: i.train("--data.train", "synthetic:mqar?pairs=40&key_letters=1&length=512"),
     "40 mqar keys cannot be distinct", 2),
]

OUTPUTS: tuple[str, ...] = ()


def make_inputs(root: Path) -> None:
    pass
