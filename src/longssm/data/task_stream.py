"""Training (and validation) data made of task instances: ``data.train synthetic:<task>?<key>=<value>&...``.

The corpus is ``docs`` documents of exactly ``length`` tokens, one task instance each (``data/tasks.py``), laid end
to end: document i is tokens [i·length, (i + 1)·length). Nothing is stored: a slice generates the documents it
touches (deterministic in the spec's ``seed`` and the document's index, so a resumed run reads the same tokens),
and the last few are kept. It goes through the same B-contiguous-stream loader as a text corpus, document starts
included, so a carried state is reset where a new instance begins. An instance is at most ``length`` tokens; the
few tokens it lacks are spaces put before it.

Keys of the spec (all optional but the task):

    length    tokens per document (default 256). With windows of T tokens and length = k·T, an instance spans k
              windows: the answer of a task trained at T=16 with length 256 lies 15 windows after its question
    docs      documents (default 65,536); the data wraps after docs × length tokens, as a corpus does
    seed      seed of the instances (default 0; use another for validation data)
    haystack  wikitext (the shipped training text; for data.valid the validation text), repeat or a text file
    depth | pairs | fraction   the task's axis (``data/tasks.py``): a number, or ``random`` for depth (the default:
              uniform per document); pairs default 8, fraction default 0.5
    any setting of the task (``mqar``: digits, key_letters, queries; ...)

Example: ``synthetic:mqar?length=256&pairs=8&digits=1&haystack=repeat``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from ..errors import UserError
from .prepared import Corpus
from .tasks import Haystack, Task, check_axis, load_haystack, parse_spec, spec_text
from .tokenizer import Tokenizer

PREFIX = "synthetic:"
STREAM_KEYS = {"length": 256, "docs": 65536, "seed": 0}
AXIS_DEFAULTS = {"depth": "random", "pairs": "8", "fraction": "0.5"}
KEPT_DOCUMENTS = 4096
"""Generated documents kept for the windows that read them again (B streams read B documents at a time)."""


def is_synthetic(spec: str) -> bool:
    return spec.startswith(PREFIX)


def _integer(key: str, value: str, spec: str) -> int:
    try:
        out = int(value)
    except ValueError:
        raise UserError(f"{spec}: {key} must be an integer; got {value!r}") from None
    if out < (0 if key == "seed" else 1):
        raise UserError(f"{spec}: {key} must be >= {0 if key == 'seed' else 1}; got {value}")
    return out


class TaskTokens:
    """``docs × length`` token ids generated on demand (``len`` and slicing, like a prepared split)."""

    def __init__(self, task: Task, tokenizer: Tokenizer, haystack: Haystack, length: int, docs: int, seed: int,
                 axis: str, params: Mapping[str, int], canonical: str) -> None:
        self.task, self.tokenizer, self.haystack = task, tokenizer, haystack
        self.length, self.docs, self.seed, self.axis, self.params = length, docs, seed, axis, dict(params)
        self.salt = int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "little")
        self.pad = (tokenizer.encode(" ") or [0])[0]
        self.kept: OrderedDict[int, np.ndarray] = OrderedDict()
        self.document(0)  # a spec whose content does not fit fails here, before training starts

    def __len__(self) -> int:
        return self.docs * self.length

    def document(self, i: int) -> np.ndarray:
        """Document ``i``: spaces, then one instance, ``length`` tokens in all (int64)."""
        if i in self.kept:
            self.kept.move_to_end(i)
            return self.kept[i]
        rng = np.random.default_rng([self.seed, self.salt, i])
        value = float(rng.uniform()) if self.axis == "random" else float(self.axis)
        value = int(value) if self.task.axis == "pairs" else value
        tokens = self.task.generate(rng, self.tokenizer, self.haystack, self.length, value, **self.params).tokens
        doc = np.full(self.length, self.pad, dtype=np.int64)
        doc[self.length - len(tokens):] = tokens
        self.kept[i] = doc
        if len(self.kept) > KEPT_DOCUMENTS:
            self.kept.popitem(last=False)
        return doc

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise IndexError("task tokens are read in contiguous slices")
        if stop <= start:
            return np.zeros(0, dtype=np.int64)
        first, last = start // self.length, (stop - 1) // self.length
        joined = np.concatenate([self.document(i) for i in range(first, last + 1)])
        offset = first * self.length
        return joined[start - offset : stop - offset]


def synthetic_corpus(spec: str, tokenizer: Tokenizer, role: str = "train") -> Corpus:
    """The corpus of a ``synthetic:`` spec (module docstring); ``UserError`` for an unknown task or key, a bad
    value, or a length too short for the task's content."""
    task, given = parse_spec(spec[len(PREFIX):])
    stream = {key: _integer(key, given.pop(key), spec) if key in given else default
              for key, default in STREAM_KEYS.items()}
    haystack = given.pop("haystack", "wikitext")
    axis = given.pop(task.axis, AXIS_DEFAULTS[task.axis])
    if not (axis == "random" and task.axis == "depth"):
        try:
            check_axis(task, float(axis))
        except ValueError:
            raise UserError(f"{spec}: {task.axis} must be a number{' or random' if task.axis == 'depth' else ''}; "
                            f"got {axis!r}") from None
    params = task.check_params(given)
    hay = load_haystack(haystack, tokenizer, "eval" if role == "valid" else "train")
    canonical = (f"{spec_text(task, params)}|{task.axis}={axis}|{haystack}|"
                 f"{'|'.join(f'{k}={v}' for k, v in stream.items())}")
    tokens = TaskTokens(task, tokenizer, hay, stream["length"], stream["docs"], stream["seed"], axis, params,
                        canonical)
    digest = hashlib.sha256((canonical + tokenizer.identity + "task-stream-v1").encode()).hexdigest()[:20]
    starts = np.arange(stream["docs"], dtype=np.int64) * stream["length"]
    return Corpus(tokens, starts, spec, digest)
