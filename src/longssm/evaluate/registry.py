"""Evaluation metrics by name: each metric registers a compute function and a typed result.

A metric is declared in its own module:

    @register_metric("effective_remembrance", EffRemResult, settings=effrem_settings)
    def compute_effective_remembrance(ctx: EvalContext) -> EffRemResult: ...

- ``compute(ctx)`` runs the metric on the shared :class:`~longssm.evaluate.context.EvalContext` (model, tokens,
  cache, lengths, progress bars, the shared long pass) and returns its result;
- ``result_type`` is a dataclass deriving from :class:`MetricResult`: ``to_json()`` is the metric's entry in the
  result JSON and ``from_json()`` reads one back, checking its shape against the field types;
- ``settings(ctx)`` (optional) resolves and checks the metric's data-dependent settings before *any* metric runs,
  so that a bad passkey length fails before an hour of perplexity; what it returns is recorded in the result's
  ``"settings"``.

:func:`metric_names` imports the built-in metric modules on first use (they import torch), so that importing this
module stays cheap. :func:`normalise_metrics` checks the names of ``EvalConfig.metrics`` (which ``longssm.config``
cannot: it knows no registry), expands ``all`` and puts them in canonical order; ``evaluate_run`` calls it first.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..data.tasks import EVAL_TASKS
from ..errors import ConfigError, UserError

if TYPE_CHECKING:
    from .context import EvalContext

BUILTIN_METRICS = {
    "ppl_vs_length": "perplexity",
    "position_ppl": "perplexity",
    "effective_remembrance": "remembrance",
    "passkey": "passkey",
    "state_stats": "state_stats",
    **{name: "tasks" for name in EVAL_TASKS},
}
"""The built-in metrics in canonical order (that of ``--metrics all`` and of the result JSON) -> the module of
``longssm.evaluate`` that registers each."""

R = TypeVar("R", bound="MetricResult")

JSON_SCALARS: dict[type, tuple[tuple[type, ...], str]] = {
    float: ((int, float), "a number"), int: ((int,), "an integer"), str: ((str,), "a string"),
    bool: ((bool,), "true or false"),
}
"""Scalar field types -> (the JSON values accepted, how the error names them)."""


class MetricResult:
    """Base of the per-metric result dataclasses: JSON form = the fields by name (override for another shape)."""

    def to_json(self) -> Any:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[R], data: Any, where: str) -> R:
        """Read the JSON form back; ``UserError`` naming ``where`` and the offending key when its shape is wrong.
        Keys that are not fields are ignored."""
        if not isinstance(data, dict):
            raise UserError(f"{where} must be a mapping; got {_short(data)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                if f.default is dataclasses.MISSING:
                    raise UserError(f"{where} has no {f.name!r}")
                continue
            check_json(data[f.name], hints[f.name], f"{where}.{f.name}")
            values[f.name] = data[f.name]
        return cls(**values)


def check_json(value: Any, hint: Any, where: str) -> None:
    """Raise ``UserError`` unless parsed JSON ``value`` has type ``hint``: int, float (an int is accepted), str,
    bool, Any, ``list[X]``, ``dict[str, X]`` or ``X | None``, nested in any way."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or (value is None and type(None) in args):
        return
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return check_json(value, inner, where)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where} must be a list; got {_short(value)}")
        for i, item in enumerate(value):
            check_json(item, args[0], f"{where}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping; got {_short(value)}")
        for key, item in value.items():
            check_json(item, args[1], f"{where}.{key}")
        return
    accepted, description = JSON_SCALARS[hint]
    if not isinstance(value, accepted) or (isinstance(value, bool) and hint is not bool):
        raise UserError(f"{where} must be {description}; got {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Metric:
    """A registered metric (see the module docstring)."""

    name: str
    """Key in ``EvalConfig.metrics`` and in the result JSON."""
    result_type: type[MetricResult]
    """What ``compute`` returns; ``result_type.from_json`` reads the JSON entry back."""
    compute: Callable[[EvalContext], MetricResult]
    """Runs the metric (using and filling the evaluation cache)."""
    settings: Callable[[EvalContext], dict[str, Any]]
    """Resolves and checks the data-dependent settings before any metric runs; recorded in the result."""


_METRICS: dict[str, Metric] = {}


def _no_settings(ctx: EvalContext) -> dict[str, Any]:
    return {}


def register_metric(name: str, result_type: type[R],
                    settings: Callable[[EvalContext], dict[str, Any]] = _no_settings
                    ) -> Callable[[Callable[[EvalContext], R]], Callable[[EvalContext], R]]:
    """Decorator registering ``compute(ctx) -> result_type`` as the metric ``name`` (see the module docstring)."""

    def register(compute: Callable[[EvalContext], R]) -> Callable[[EvalContext], R]:
        if name in _METRICS and _METRICS[name].compute is not compute:
            raise ValueError(f"metric {name!r} is already registered")
        _METRICS[name] = Metric(name, result_type, compute, settings)
        return compute

    return register


def _load_builtin_metrics() -> None:
    for module in dict.fromkeys(BUILTIN_METRICS.values()):
        importlib.import_module(f"{__package__}.{module}")


def metric_names() -> tuple[str, ...]:
    """Registered metric names: the built-in ones in canonical order, then others in registration order."""
    _load_builtin_metrics()
    return tuple(BUILTIN_METRICS) + tuple(name for name in _METRICS if name not in BUILTIN_METRICS)


def normalise_metrics(names: list[str]) -> list[str]:
    """``EvalConfig.metrics`` as the evaluation runs them, in canonical order (that of :func:`metric_names`):
    ``all`` -> every registered metric but the long-context tasks, ``tasks`` -> the long-context tasks (``mqar``,
    ``copy``, ...: each generates its own instances, and lengths too short for them are an error).
    ``ConfigError`` naming the key ``metrics`` for an unknown name or an empty list."""
    known = metric_names()
    groups = {"all": [n for n in known if n not in EVAL_TASKS], "tasks": list(EVAL_TASKS)}
    wanted = {m for name in names for m in groups.get(name, [name])}
    if not names or any(name not in known for name in wanted):
        raise ConfigError("metrics", f"a comma-separated subset of {','.join(known)} (or all, tasks)", list(names),
                          got=",".join(names) or "nothing")
    return [name for name in known if name in wanted]


def get_metric(name: str) -> Metric:
    """The registered metric ``name`` (``UserError`` listing the known ones otherwise)."""
    _load_builtin_metrics()
    if name not in _METRICS:
        raise UserError(f"unknown metric {name!r}; known: {', '.join(_METRICS)}")
    return _METRICS[name]
