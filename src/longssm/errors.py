"""The exception types the command line turns into a one-line message and a non-zero exit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class UserError(Exception):
    """Bad input from the user (a flag, a file, a config key): reported as one line, no traceback."""


UNKNOWN_KEY = "a known config key"
"""``ConfigError.expected`` of a key that the config does not have."""


class ConfigError(UserError):
    """A config value that does not fit its key, with the parts structured: ``key`` (dotted as in YAML:
    ``"train.lr"``; ``EvalConfig``'s keys are flat: ``"max_tokens"``), ``expected`` (what the key takes: ``"a
    number"``, ``">= 1"``, ``"one of zero, previous"``, or ``UNKNOWN_KEY``) and ``value`` (the value given).

    The message is one line naming the key: ``train.lr must be a number; got 'fast'``. The command line shows the
    same error with the key spelled as its flag (:meth:`render`), e.g. ``--max-tokens must be >= 1; got 0``.
    """

    def __init__(self, key: str, expected: str, value: Any, *, suggestion: str | None = None, every: bool = False,
                 got: str | None = None) -> None:
        self.key = key
        self.expected = expected
        self.value = value
        self.suggestion = suggestion
        """For an unknown key: the closest known key, if one is close."""
        self.every = every
        """The bound applies to every value of a list (``every value of passkey_depths must be in [0, 1]``)."""
        self.got = got
        """How the given value is shown, when not as ``repr(value)`` (``got 0.5 > 0.1``)."""
        super().__init__(self.render())

    @property
    def unknown(self) -> bool:
        return self.expected == UNKNOWN_KEY

    def render(self, name: Callable[[str], str] = str) -> str:
        """The message with each key shown as ``name(key)`` (the command line passes its key -> flag mapping).
        An unknown key is shown as it was typed (a YAML key, a ``--grid`` key), whatever ``name`` is."""
        if self.unknown:
            hint = f" (did you mean {self.suggestion}?)" if self.suggestion else ""
            return f"unknown config key {self.key!r}{hint}"
        got = self.got if self.got is not None else _shown(self.value)
        return f"{'every value of ' if self.every else ''}{name(self.key)} must be {self.expected}; got {got}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (library errors can span many lines)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
