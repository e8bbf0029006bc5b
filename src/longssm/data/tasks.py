"""Long-context tasks generated offline, deterministic from a seed: associative recall, copying, RULER's needle
variants, variable tracking and passkey, for any tokenizer.

References
    [1] Arora et al., "Zoology: Measuring and Improving Recall in Efficient Language Models", 2023 (MQAR).
    [2] Jelassi et al., "Repeat After Me: Transformers are Better than State Space Models at Copying", 2024.
    [3] Hsieh et al., "RULER: What's the Real Context Size of Your Long-Context Language Models?", 2024
        (niah_multikey / multivalue / multiquery, variable tracking; we follow their phrasing).
    [4] Mohtashami & Jaggi, "Landmark Attention", 2023 (passkey; ``evaluate/passkey.py`` scores it).

Glossary
    instance   one prompt: text pieces, some of them answers; its token ids are the pieces' ids concatenated
    answer     a piece the model must produce (a number, a word); scored token-exactly: a hit when every one of
               its tokens is the model's argmax given the text before it (teacher forcing: a later answer of the
               same instance is scored with the earlier ones given, as lm-eval's ``loglikelihood`` does)
    L          the instance's length budget in tokens: an instance has at most L tokens and falls short of L by
               less than one haystack unit (the filler is cut at whole words, never inside one)
    haystack   filler text between the pieces that matter: ``wikitext`` (the shipped WikiText-103 text: the
               validation split for evaluation, the training prefix for training data), ``repeat`` (passkey's five
               sentences repeated) or a text file; cut into units = whitespace + one word (``\\s*\\S+``)
    axis       the task's second grid axis: the depth in [0, 1] of the first relevant needle (niah_*,
               variable_tracking, passkey), the number of key-value pairs (mqar) or the fraction of L the string
               to copy takes (copy)

Formats (``{v}``: a random number of ``digits`` digits without a leading zero; ``{k}``: a random lowercase word;
``{X}``: a random uppercase word; ``[hay]``: haystack units; an answer piece is written ⟨ ⟩):

    mqar            "Remember the pairs:" ( " {k}" " {v}" )×pairs "." [hay] "\\nRecall:" ( " {k}" ⟨ " {v}"⟩ )×queries;
                    with echo=1 the queries are asked once more, unscored, right after the pairs: "\\nCheck:"
                    ( " {k}" " {v}" )×queries before the haystack (training data whose windows teach storing the
                    pairs: under truncated BPTT nothing else does, see ``synthetic.py``); terse=1 writes the
                    markers "P:", "\\nC:", "\\nR:" instead
    copy            "Copy the words:" ( " {k}" )×n [hay] "\\nThe words again:" ( ⟨" {k}"⟩ )×n
    niah_multikey   "Some special magic numbers are hidden in the text. Remember them.\\n" [hay with needles
                    " One of the special magic numbers for {k} is: {v}." for `needles` distinct keys]
                    "\\nWhat is the special magic number for {k}? The special magic number for {k} is:" ⟨" {v}"⟩
    niah_multivalue the same, `values` needles of one key; "... What are all the special magic numbers for {k}? The
                    special magic numbers for {k} are:" ⟨" {v1}"⟩ ⟨" {v2}"⟩ ... in the order they appear
    niah_multiquery `needles` keys, `queries` of them asked: "... for {k1}, {k2} and {k3}? The special magic numbers
                    for {k1}, {k2} and {k3} are:" ⟨" {v1}"⟩ ⟨" {v2}"⟩ ⟨" {v3}"⟩ in the order asked
    variable_tracking "Memorize the variables.\\n" [hay with " VAR {X1} = {v} ." then " VAR {Xi} = {Xi-1} ." for
                    i = 2 .. hops, in order; `chains` chains, the others with other values]
                    "\\nWhat is the value of {Xh}? The value of {Xh} is" ⟨" {v}"⟩
    passkey         ``evaluate/passkey.py``'s PREFIX [hay] NEEDLE [hay] QUESTION ⟨" {v}"⟩ (the passkey metric builds
                    its own prompts, with the repeat haystack cut to exactly L; this generator is passkey for
                    training data and the export, with whichever haystack is given)

Every piece after the first starts with whitespace, and every unit ends with a non-space, so no tokenizer that
splits words at whitespace first (byte, GPT-2's BPE) merges tokens across pieces: the piecewise ids equal the ids
of the whole text, which is what makes an exported instance (``tasks export``) score the same in lm-eval.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError
from ..paths import resolve_path
from .tokenizer import Tokenizer

UNIT = re.compile(r"\s*\S+")
WIKITEXT = {"eval": "builtin:wikitext-103/wiki.valid.tokens", "train": "builtin:wikitext-103/wiki.train.prefix.tokens"}
REPEAT = ["The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ", "There and back again. "]
"""The ``repeat`` haystack: passkey's filler sentences (Mohtashami & Jaggi)."""
PASSKEY_PREFIX = "Find the pass key hidden in this text and remember it.\n"
PASSKEY_NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"
HAYSTACK_CHARS = 64 << 20
"""A haystack file is read up to this many characters."""


@dataclass
class Instance:
    """One prompt of a task (see the module docstring)."""

    texts: list[str]
    """The pieces; ``"".join(texts)`` is the instance's text."""
    ids: list[list[int]]
    """Each piece's token ids."""
    answers: list[int]
    """Indices of the answer pieces, in order."""

    @property
    def tokens(self) -> list[int]:
        return [t for piece in self.ids for t in piece]

    def spans(self) -> list[tuple[int, int]]:
        """The token range [start, end) of each answer."""
        starts = np.cumsum([0] + [len(p) for p in self.ids])
        return [(int(starts[i]), int(starts[i + 1])) for i in self.answers]

    def answer_texts(self) -> list[str]:
        return [self.texts[i] for i in self.answers]

    def context_text(self, answer: int) -> str:
        """The text before the ``answer``-th answer (the earlier answers included)."""
        return "".join(self.texts[: self.answers[answer]])


class Haystack:
    """Filler text cut into units (``UNIT``), each tokenized once; ``take`` draws a contiguous run of them."""

    def __init__(self, units: list[str], tokenizer: Tokenizer, source: str, cyclic: bool = False) -> None:
        if not units:
            raise UserError(f"haystack {source} holds no text")
        self.units, self.source, self.cyclic = units, source, cyclic
        self.ids = tokenizer.encode_batch(units)
        self.ends = np.cumsum([len(x) for x in self.ids])

    @property
    def tokens(self) -> int:
        return int(self.ends[-1])

    def take(self, rng: np.random.Generator, budget: int) -> tuple[list[str], list[list[int]]]:
        """Whole units of at most ``budget`` tokens in all, from a random unit on, continuing from the start of the
        text past its end; ``UserError`` when a haystack that is not ``cyclic`` holds fewer than ``budget`` tokens
        (a unit is never used twice in one run)."""
        if budget <= 0:
            return [], []
        if not self.cyclic and self.tokens < budget:
            raise UserError(f"haystack {self.source} has {self.tokens} tokens, fewer than the {budget} an instance "
                            f"needs; use a longer haystack file or shorter task lengths")
        n, i = len(self.units), int(rng.integers(0, len(self.units)))
        texts, ids, used = [], [], 0
        while used + len(self.ids[i % n]) <= budget:
            texts.append(self.units[i % n])
            ids.append(self.ids[i % n])
            used += len(ids[-1])
            i += 1
        return texts, ids


def haystack_units(text: str) -> list[str]:
    """``text`` cut into units (``UNIT``), each starting with whitespace (a space is put before the first one when
    the text starts with a word)."""
    units = UNIT.findall(text)
    if units and not units[0][0].isspace():
        units[0] = " " + units[0]
    return units


_HAYSTACKS: dict[tuple[str, str, int, float], Haystack] = {}


def load_haystack(spec: str, tokenizer: Tokenizer, role: str = "eval") -> Haystack:
    """``wikitext`` (the shipped text of ``role``: eval or train), ``repeat`` or a text file; kept once loaded (per
    file, its size and time, and tokenizer)."""
    if spec == "repeat":
        return Haystack(haystack_units("".join(REPEAT)), tokenizer, "repeat", cyclic=True)
    name = WIKITEXT[role] if spec == "wikitext" else spec
    path = resolve_path(name)
    if not path.is_file():
        raise UserError(f"haystack file not found: {spec} (give wikitext, repeat or a text file)")
    st = path.stat()
    key = (str(path), tokenizer.identity, st.st_size, st.st_mtime)
    if key not in _HAYSTACKS:
        _HAYSTACKS.clear()  # one haystack at a time: a big file's units are not kept twice
        with open(path, encoding="utf-8", errors="replace") as f:
            _HAYSTACKS[key] = Haystack(haystack_units(f.read(HAYSTACK_CHARS)), tokenizer, spec)
    return _HAYSTACKS[key]


# ----------------------------------------------------------------------------------------------------------
# Random keys, values and layouts


def number(rng: np.random.Generator, digits: int) -> str:
    """A random ``digits``-digit number without a leading zero."""
    return str(int(rng.integers(1, 10))) + "".join(str(int(d)) for d in rng.integers(0, 10, digits - 1))


def word(rng: np.random.Generator, letters: int, upper: bool = False) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if upper else "abcdefghijklmnopqrstuvwxyz"
    return "".join(alphabet[int(i)] for i in rng.integers(0, 26, letters))


def distinct(rng: np.random.Generator, n: int, draw: Callable[[np.random.Generator], str], space: int,
             what: str) -> list[str]:
    """``n`` distinct draws (``UserError`` when the ``space`` of possible draws is smaller than ``n``)."""
    if n > space:
        raise UserError(f"{n} {what} cannot be distinct: only {space} exist with these settings")
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen.setdefault(draw(rng))
    return list(seen)


def numbers_space(digits: int) -> int:
    return 9 * 10 ** (digits - 1)


@dataclass
class Builder:
    """Pieces of an instance being built, tokenized as they are added."""

    tokenizer: Tokenizer
    texts: list[str] = dataclasses.field(default_factory=list)
    ids: list[list[int]] = dataclasses.field(default_factory=list)
    answers: list[int] = dataclasses.field(default_factory=list)

    def add(self, text: str, answer: bool = False) -> None:
        if answer:
            self.answers.append(len(self.texts))
        self.texts.append(text)
        self.ids.append(self.tokenizer.encode(text))

    def extend(self, texts: list[str], ids: list[list[int]]) -> None:
        self.texts += texts
        self.ids += ids

    def length(self) -> int:
        return sum(len(x) for x in self.ids)

    def instance(self) -> Instance:
        return Instance(self.texts, self.ids, self.answers)


def cost(tokenizer: Tokenizer, texts: list[str]) -> int:
    return sum(len(tokenizer.encode(t)) for t in texts)


def with_needles(b: Builder, rng: np.random.Generator, hay: Haystack, budget: int,
                 needles: list[tuple[float, str]]) -> None:
    """Haystack of ``budget`` tokens (needles included) with each needle text at its depth (a unit boundary)."""
    needle_ids = [b.tokenizer.encode(text) for _, text in needles]
    texts, ids = hay.take(rng, budget - sum(len(x) for x in needle_ids))
    filler = np.cumsum([0] + [len(x) for x in ids])
    total = int(filler[-1])
    at = [int(np.searchsorted(filler, depth * total)) for depth, _ in needles]
    order = sorted(range(len(needles)), key=lambda i: (at[i], i))
    previous = 0
    for i in order:
        b.extend(texts[previous : at[i]], ids[previous : at[i]])
        b.texts.append(needles[i][1])
        b.ids.append(needle_ids[i])
        previous = at[i]
    b.extend(texts[previous:], ids[previous:])


class TooShort(UserError):
    """A length too short for a task's content."""


def too_short(task: str, length: int, needed: int) -> TooShort:
    return TooShort(f"{task}: length {length} is too short for the task's content ({needed} tokens with these "
                     f"settings and this tokenizer); use longer task lengths or fewer pairs/needles")


# ----------------------------------------------------------------------------------------------------------
# The tasks


@dataclass(frozen=True)
class Task:
    """A task: how to generate an instance, read its answers back from its text, and guess uniformly."""

    name: str
    axis: str
    """The second grid axis (module docstring): depth, pairs or fraction."""
    axis_default: tuple[float, ...]
    params: Mapping[str, int]
    """Its settings and their defaults (``--mqar.digits 3`` ...)."""
    generate: Callable[..., Instance]
    """``generate(rng, tokenizer, haystack, length, axis_value, **params) -> Instance``."""
    parse: Callable[[str], list[str]]
    """The answers the text asks for, read from the text without the generator's bookkeeping."""
    guess: Callable[..., str]
    """``guess(rng, **params)``: one answer drawn uniformly from the answers possible."""
    chance: Callable[..., float]
    """``chance(**params)``: the probability that ``guess`` is right, per answer."""

    def check_params(self, params: Mapping[str, Any]) -> dict[str, int]:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise UserError(f"task {self.name} has no setting {', '.join(unknown)}; its settings: "
                            f"{', '.join(f'{k} (default {v})' for k, v in self.params.items())}")
        out = dict(self.params)
        for key, value in params.items():
            try:
                out[key] = int(value)
            except (TypeError, ValueError):
                raise UserError(f"task {self.name}: {key} must be an integer; got {value!r}") from None
            low, high = (0, 1) if key in ("echo", "terse") else (1, None)
            if out[key] < low or (high is not None and out[key] > high):
                raise UserError(f"task {self.name}: {key} must be {'0 or 1' if high else '>= 1'}; got {value!r}")
        return out


MQAR_MARKERS = {0: ("Remember the pairs:", "\nCheck:", "\nRecall:"), 1: ("P:", "\nC:", "\nR:")}
"""mqar's three markers, in words (terse=0) or terse (terse=1: short enough for byte-level windows of 16)."""


def mqar(rng, tokenizer, hay, length, pairs, digits, key_letters, queries, echo, terse) -> Instance:
    pairs = int(pairs)
    keys = distinct(rng, pairs, lambda r: word(r, key_letters), 26**key_letters, "mqar keys")
    values = [number(rng, digits) for _ in keys]
    asked = [int(i) for i in rng.permutation(pairs)[: min(queries, pairs)]]
    start, check, recall = MQAR_MARKERS[terse]
    b = Builder(tokenizer)
    b.add(start)
    for k, v in zip(keys, values):
        b.add(f" {k}")
        b.add(f" {v}")
    b.add(".")
    if echo:  # the queries asked once right away, unscored: text inside a training window that teaches storing
        b.add(check)
        for i in asked:
            b.add(f" {keys[i]}")
            b.add(f" {values[i]}")
    tail = [recall] + [t for i in asked for t in (f" {keys[i]}", f" {values[i]}")]
    need = b.length() + cost(tokenizer, tail)
    if need > length:
        raise too_short("mqar", length, need)
    b.extend(*hay.take(rng, length - need))
    b.add(tail[0])
    for i in asked:
        b.add(f" {keys[i]}")
        b.add(f" {values[i]}", answer=True)
    return b.instance()


def parse_mqar(text: str) -> list[str]:
    start, _, end = MQAR_MARKERS[0] if "\nRecall:" in text else MQAR_MARKERS[1]
    head, _, recall = text.rpartition(end)
    pairs = dict(re.findall(r" ([a-z]+) (\d+)", head.partition(start)[2].partition(".")[0]))
    return [f" {pairs[k]}" for k in re.findall(r" ([a-z]+) \d+", recall)]


def copy_task(rng, tokenizer, hay, length, fraction, letters) -> Instance:
    b = Builder(tokenizer)
    b.add("Copy the words:")
    sep = "\nThe words again:"
    fixed = b.length() + len(tokenizer.encode(sep))
    words: list[str] = []
    room = int(fraction * length)
    used, misses = 0, 0
    while misses < 8:  # the room is filled until 8 draws in a row no longer fit
        w = f" {word(rng, int(rng.integers(1, letters + 1)))}"
        n = len(tokenizer.encode(w))
        if used + n > room or 2 * (used + n) + fixed > length:
            misses += 1
            continue
        misses = 0
        words.append(w)
        used += n
    if not words:
        one = len(tokenizer.encode(" a"))
        raise too_short("copy", length, max(fixed + 2 * one, math.ceil(one / fraction)))
    for w in words:
        b.add(w)
    b.extend(*hay.take(rng, length - fixed - 2 * used))
    b.add(sep)
    for w in words:
        b.add(w, answer=True)
    return b.instance()


def parse_copy(text: str) -> list[str]:
    head = text.partition("\nThe words again:")[0].partition("Copy the words:")[2]
    n = len(text.partition("\nThe words again:")[2].split())
    return [f" {w}" for w in head.split()[:n]]


NIAH_PREFIX = "Some special magic numbers are hidden in the text. Remember them.\n"


def _needle(key: str, value: str) -> str:
    return f" One of the special magic numbers for {key} is: {value}."


def _depths(rng: np.random.Generator, depth: float, n: int) -> list[float]:
    """The first relevant needle at ``depth``, the others uniformly in [depth, 1]."""
    return [float(depth)] + sorted(float(x) for x in rng.uniform(depth, 1.0, n - 1))


def _keys_list(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + f" and {keys[-1]}"


def niah(rng, tokenizer, hay, length, depth, task, needles, values, queries, digits, key_letters) -> Instance:
    """The three needle variants of RULER (module docstring)."""
    n_keys = 1 if task == "niah_multivalue" else needles
    keys = distinct(rng, n_keys, lambda r: word(r, key_letters), 26**key_letters, "needle keys")
    per_key = values if task == "niah_multivalue" else 1
    vals = {k: distinct(rng, per_key, lambda r: number(r, digits), numbers_space(digits), "values") for k in keys}
    asked = [keys[int(i)] for i in rng.permutation(n_keys)[: (min(queries, n_keys) if task == "niah_multiquery"
                                                               else 1)]]
    relevant = [(k, v) for k in asked for v in vals[k]]
    others = [(k, vals[k][0]) for k in keys if k not in asked]
    placed = list(zip(_depths(rng, depth, len(relevant)), [_needle(k, v) for k, v in relevant]))
    placed += [(float(rng.uniform()), _needle(k, v)) for k, v in others]
    if task == "niah_multikey":
        question = f"\nWhat is the special magic number for {asked[0]}? The special magic number for {asked[0]} is:"
    else:
        keys_text = _keys_list(asked)
        question = (f"\nWhat are all the special magic numbers for {keys_text}? The special magic numbers for "
                    f"{keys_text} are:")
    answers = [f" {v}" for _, v in relevant]  # multivalue: in the order of the depths, which are sorted
    b = Builder(tokenizer)
    b.add(NIAH_PREFIX)
    need = b.length() + cost(tokenizer, [question] + answers)
    needle_cost = cost(tokenizer, [t for _, t in placed])
    if need + needle_cost > length:
        raise too_short(task, length, need + needle_cost)
    with_needles(b, rng, hay, length - need, placed)
    b.add(question)
    for a in answers:
        b.add(a, answer=True)
    return b.instance()


def parse_niah(text: str) -> list[str]:
    body, _, question = text.rpartition("\nWhat ")
    found: dict[str, list[str]] = {}
    for k, v in re.findall(r"One of the special magic numbers for ([a-z]+) is: (\d+)\.", body):
        found.setdefault(k, []).append(v)
    asked = re.findall(r"[a-z]+", question.partition("?")[0].rpartition(" for ")[2])
    asked = [k for k in asked if k != "and"]
    return [f" {v}" for k in asked for v in found[k]]


def variable_tracking(rng, tokenizer, hay, length, depth, hops, chains, digits, name_letters) -> Instance:
    names = distinct(rng, hops * chains, lambda r: word(r, name_letters, upper=True), 26**name_letters,
                     "variable names")
    values = distinct(rng, chains, lambda r: number(r, digits), numbers_space(digits), "chain values")
    statements = []
    for c in range(chains):
        chain = names[c * hops : (c + 1) * hops]
        texts = [f" VAR {chain[0]} = {values[c]} ."] + [f" VAR {chain[i]} = {chain[i - 1]} ." for i in range(1, hops)]
        at = _depths(rng, depth, hops) if c == 0 else sorted(float(x) for x in rng.uniform(0, 1, hops))
        statements += list(zip(at, texts))
    last = names[hops - 1]
    question = f"\nWhat is the value of {last}? The value of {last} is"
    b = Builder(tokenizer)
    b.add("Memorize the variables.\n")
    need = b.length() + cost(tokenizer, [question, f" {values[0]}"])
    if need + cost(tokenizer, [t for _, t in statements]) > length:
        raise too_short("variable_tracking", length, need + cost(tokenizer, [t for _, t in statements]))
    with_needles(b, rng, hay, length - need, statements)
    b.add(question)
    b.add(f" {values[0]}", answer=True)
    return b.instance()


def parse_variable_tracking(text: str) -> list[str]:
    body, _, question = text.rpartition("\nWhat is the value of ")
    assigned = dict(re.findall(r" VAR ([A-Z]+) = (\w+) \.", body))
    name = question.partition("?")[0]
    while name in assigned:
        name = assigned[name]
    return [f" {name}"]


def passkey(rng, tokenizer, hay, length, depth, digits) -> Instance:
    key = number(rng, digits)
    needle = PASSKEY_NEEDLE.format(key=key)
    b = Builder(tokenizer)
    b.add(PASSKEY_PREFIX)
    need = b.length() + cost(tokenizer, [PASSKEY_QUESTION, f" {key}"])
    if need + cost(tokenizer, [needle]) > length:
        raise too_short("passkey", length, need + cost(tokenizer, [needle]))
    with_needles(b, rng, hay, length - need, [(float(depth), needle)])
    b.add(PASSKEY_QUESTION)
    b.add(f" {key}", answer=True)
    return b.instance()


def parse_passkey(text: str) -> list[str]:
    return [" " + re.search(r"The pass key is (\d+)\. Remember it\.", text).group(1)]


def _number_guess(rng, digits, **_) -> str:
    return f" {number(rng, digits)}"


def _number_chance(digits, **_) -> float:
    return 1 / numbers_space(digits)


def _word_guess(rng, letters, **_) -> str:
    return f" {word(rng, int(rng.integers(1, letters + 1)))}"


def _word_chance(letters, **_) -> float:
    """P(a uniform guess is the word): words of n ~ U{1..letters} letters, each letter uniform."""
    return sum((1 / letters) ** 2 * 26.0**-n for n in range(1, letters + 1))


def _niah_task(name: str) -> Task:
    return Task(name, "depth", (0.0, 0.25, 0.5, 0.75, 1.0),
                {"needles": 4, "values": 3, "queries": 2, "digits": 5, "key_letters": 6},
                lambda *a, **k: niah(*a, task=name, **k), parse_niah, _number_guess, _number_chance)


TASKS: dict[str, Task] = {
    "mqar": Task("mqar", "pairs", (4, 8, 16), {"digits": 3, "key_letters": 3, "queries": 4, "echo": 0,
                                                       "terse": 0},
                 mqar, parse_mqar, _number_guess, _number_chance),
    "copy": Task("copy", "fraction", (0.1, 0.25, 0.5), {"letters": 5},
                 copy_task, parse_copy, _word_guess, _word_chance),
    **{name: _niah_task(name) for name in ("niah_multikey", "niah_multivalue", "niah_multiquery")},
    "variable_tracking": Task("variable_tracking", "depth", (0.0, 0.25, 0.5, 0.75, 1.0),
                              {"hops": 4, "chains": 2, "digits": 5, "name_letters": 5},
                              variable_tracking, parse_variable_tracking, _number_guess, _number_chance),
    "passkey": Task("passkey", "depth", (0.0, 0.25, 0.5, 0.75, 1.0), {"digits": 5},
                    passkey, parse_passkey, _number_guess, _number_chance),
}
"""Every task by name."""
EVAL_TASKS = ("mqar", "copy", "niah_multikey", "niah_multivalue", "niah_multiquery", "variable_tracking")
"""The tasks that are evaluation metrics of their own (``evaluate/tasks.py``; passkey has ``evaluate/passkey.py``)."""


def axis_key(task: Task, value: float) -> str:
    """How an axis value is written as a key: ``8`` pairs, depth ``0.5``."""
    return str(int(value)) if task.axis == "pairs" else str(float(value))


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def check_axis(task: Task, value: float) -> None:
    if task.axis in ("depth", "fraction") and not 0 <= value <= 1:
        raise UserError(f"task {task.name}: {task.axis} must be in [0, 1]; got {value:g}")
    if task.axis == "fraction" and value == 0:
        raise UserError(f"task {task.name}: fraction must be > 0")
    if task.axis == "pairs" and (value < 1 or value != int(value)):
        raise UserError(f"task {task.name}: pairs must be an integer >= 1; got {value:g}")


def instances(task: Task, tokenizer: Tokenizer, hay: Haystack, length: int, axis_value: float, n: int, seed: int,
              params: Mapping[str, Any] | None = None) -> list[Instance]:
    """``n`` instances of one grid cell, deterministic in (task, seed, length, axis value, settings)."""
    settings = task.check_params(params or {})
    check_axis(task, axis_value)
    digest = hashlib.sha256(repr((task.name, length, float(axis_value), sorted(settings.items()))).encode())
    rng = np.random.default_rng([seed, int.from_bytes(digest.digest()[:8], "little")])
    value = int(axis_value) if task.axis == "pairs" else float(axis_value)
    return [task.generate(rng, tokenizer, hay, length, value, **settings) for _ in range(n)]


def score(instance: Instance, predicted: list[str]) -> list[bool]:
    """Per answer: the predicted text equals it (an oracle's ``predicted`` is ``instance.answer_texts()``)."""
    return [p == a for p, a in zip(predicted, instance.answer_texts())]


def chance(task: Task, params: Mapping[str, Any] | None = None) -> float:
    return float(task.chance(**task.check_params(params or {})))


def spec_text(task: Task, params: Mapping[str, Any]) -> str:
    """The canonical ``task?key=value...`` of a task and its settings (defaults left out)."""
    settings = task.check_params(params)
    given = [f"{k}={v}" for k, v in sorted(settings.items()) if v != task.params[k]]
    return task.name + (f"?{'&'.join(given)}" if given else "")


def parse_spec(text: str) -> tuple[Task, dict[str, str]]:
    """``task?key=value&key=value`` → (the task, the settings as given)."""
    name, _, query = text.partition("?")
    task = get_task(name)
    params: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise UserError(f"task settings are key=value pairs joined by '&'; got {part!r} in {text!r}")
        params[key] = value
    return task, params
