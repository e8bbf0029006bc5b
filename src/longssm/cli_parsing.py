"""Parsing the command line and config files into the dataclasses of ``config.py``, with jsonargparse.

jsonargparse builds the options from the dataclasses' fields and the subcommand functions' signatures (types,
defaults, docstrings). This module adds what a longssm user types on top of that, and nothing else:
- conveniences: ``--max-tokens`` = ``--max_tokens``; ``key.sub=value`` = ``--key.sub value``; a bare boolean
  flag ``--use_cache`` = ``--use_cache true`` and ``--no-progress`` = ``--progress false``; list values as
  comma-separated text (``--lengths 16,64,256``); ``--config`` also takes a shipped config's name;
- errors as one line naming the dotted key (``train.lr must be a number; got 'fast'``), raised as ``UserError``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Callable
from typing import Any

from .errors import UserError

HELP_WIDTH = 100


def field_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> type for every leaf field of dataclass ``cls``: ``{"model.d_model": int, ...}``."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(field_types(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tp
    return out


def function_types(fn: Callable, skip: set[str]) -> dict[str, Any]:
    hints = typing.get_type_hints(fn)
    return {k: v for k, v in hints.items() if k != "return" and k not in skip}


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) is list or any(typing.get_origin(a) is list for a in typing.get_args(tp))


def _is_bool(tp: Any) -> bool:
    return tp is bool


def type_text(tp: Any) -> str:
    """How a type is named in an error: ``int`` -> "an integer", ``list[int]`` -> "comma-separated integers"."""
    from .config import literal_choices

    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    choices = literal_choices(tp)
    if choices:
        return "one of " + ", ".join(map(str, choices))
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is list or (args and typing.get_origin(args[0]) is list):
        inner = typing.get_args(tp if typing.get_origin(tp) is list else args[0])[0]
        plural = {int: "integers", float: "numbers", str: "names"}.get(inner, "values")
        return f"comma-separated {plural} such as " + {int: "16,64,256", float: "0,0.5,1"}.get(inner, "a,b")
    if args:
        inner = " or ".join(names.get(a, getattr(a, "__name__", str(a))) for a in args)
        return inner + (" or null" if type(None) in typing.get_args(tp) else "")
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def normalise_args(args: list[str], types: dict[str, Any]) -> list[str]:
    """Rewrite the user's spelling into the parser's (see the module docstring)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") and "=" in arg and "." in arg.split("=", 1)[0]:
            arg = "--" + arg  # model.d_model=64
        if not arg.startswith("--") or arg == "--":
            out.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        if name not in types and name.replace("-", "_") in types:
            name = name.replace("-", "_")
        if name.startswith("no-") or name.startswith("no_"):
            positive = name[3:].replace("-", "_")
            if _is_bool(types.get(positive)) and not eq:
                out += [f"--{positive}", "false"]
                continue
        tp = types.get(name)
        if tp is not None and _is_bool(tp) and not eq and (i >= len(args) or args[i].startswith("--")):
            out += [f"--{name}", "true"]
            continue
        if tp is not None and _is_list(tp):
            if not eq:
                if i >= len(args):
                    out.append(f"--{name}")
                    continue
                value, i = args[i], i + 1
            out += [f"--{name}", _list_text(value)]
            continue
        if tp is not None and not eq and i < len(args) and _is_negative_number(args[i]):
            eq, value, i = "=", args[i], i + 1  # argparse would take -1e-3 for an option and say the value is missing
        out.append(f"--{name}{eq}{value}")
    return out


def _is_negative_number(text: str) -> bool:
    """``-5``, ``-0.1``, ``-1e-3``: a value, not an option."""
    try:
        float(text)
    except ValueError:
        return False
    return text.startswith("-")


def _list_text(value: str) -> str:
    """``"16,64"`` -> ``"[16,64]"`` (YAML); ``"null"`` and ``"[...]"`` pass through."""
    text = value.strip()
    if text.startswith("[") or text in ("null", "None", ""):
        return text
    return "[" + text + "]"


def normalise_data(data: dict[str, Any], types: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """In a config dict, comma-separated strings given for list-typed keys become lists."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out[key] = normalise_data(value, types, f"{dotted}.")
        elif isinstance(value, str) and _is_list(types.get(dotted)) and value.strip() not in ("null", ""):
            out[key] = [x.strip() for x in value.split(",")]
        else:
            out[key] = value
    return out


def one_line_error(error: Exception, types: dict[str, Any]) -> UserError:
    """jsonargparse's multi-line message -> one line naming the dotted key the user typed."""
    text = str(error)
    m = re.search(r"unrecognized arguments: (.*)", text)
    if m:
        first = m.group(1).split()[0]
        key = first.lstrip("-").split("=")[0]
        if not first.startswith("-"):
            hint = f" (a config file is given as --config {first})" if first.endswith((".yaml", ".yml")) else ""
            return UserError(f"unexpected argument {first!r}{hint}")
        what = f"config key {key!r}" if "." in key else f"option --{key.replace('_', '-')}"
        return UserError(f"unknown {what}{_suggest(key, types)}")
    m = re.search(r"Group '([\w.]+)' does not accept option '([\w.]+)'", text) or re.search(
        r"Key '([\w.]+)' is not expected", text)
    if m:
        key = ".".join(g for g in m.groups() if g)
        return UserError(f"unknown config key {key!r}{_suggest(key, types)}")
    m = re.search(r'Parser key "([\w.]+)":', text)
    if m:
        key = m.group(1)
        if key == "config":
            detail = text.split(":", 1)[1].strip().splitlines()[0]
            return UserError(f"--config: {detail}")
        given = re.findall(r"Got value: (.*)|Given value: (.*)", text)
        shown = next((a or b for a, b in given), None)
        got = f"; got {shown.strip()!r}" if shown else ""
        shown_key = key if "." in key else f"--{key.replace('_', '-')}"
        return UserError(f"{shown_key} must be {type_text(types.get(key, str))}{got}")
    m = re.search(r"Problems parsing config: (.*)", text, re.S)
    if m:
        lines = [ln.strip() for ln in m.group(1).splitlines() if ln.strip()]
        where = next((ln for ln in lines if "line" in ln), "")
        return UserError(f"config file is not valid YAML: {lines[0]}{' (' + where + ')' if where else ''}")
    if text.startswith("Unexpected config"):
        return UserError("--config: the file must hold a mapping (model:, state:, data:, train: ...) at the top level")
    m = re.search(r"argument (--[\w.]+|\w+): expected one argument", text)
    if m:
        return UserError(f"{m.group(1)} needs a value")
    m = re.search(r"the following arguments are required: (.*)", text)
    if m:
        return UserError(f"missing argument: {m.group(1).strip()}")
    return UserError(" ".join(ln.strip() for ln in text.splitlines() if ln.strip()))


def _suggest(key: str, types: dict[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(types), n=1, cutoff=0.6)
    return f" (did you mean {close[0] if '.' in close[0] else '--' + close[0].replace('_', '-')}?)" if close else ""


def shipped_config(name: str) -> str:
    """``--config`` value -> a path: an existing file as given, else a config shipped with the package
    (``mamba_tiny``, ``mamba_tiny.yaml`` or ``configs/mamba_tiny.yaml``)."""
    from pathlib import Path

    from .data.paths import shipped_configs

    if Path(name).expanduser().is_file():
        return str(Path(name).expanduser())
    stem = Path(name).name.removesuffix(".yaml").removesuffix(".yml")
    configs = shipped_configs()
    if stem in configs:
        return str(configs[stem])
    raise UserError(f"config file not found: {name} (shipped configs: {', '.join(sorted(configs))})")


def resolve_config_args(args: list[str]) -> list[str]:
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = shipped_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + shipped_config(arg.split("=", 1)[1])
    return out


def new_parser(prog: str | None = None, description: str | None = None):
    from jsonargparse import ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)

    return ArgumentParser(prog=prog, description=description, exit_on_error=False,
                          formatter_class=_formatter())


def _formatter():
    from jsonargparse import DefaultHelpFormatter

    class Formatter(DefaultHelpFormatter):
        def __init__(self, prog: str, **kwargs: Any) -> None:
            kwargs.setdefault("width", HELP_WIDTH)
            kwargs.setdefault("max_help_position", 36)
            super().__init__(prog, **kwargs)

    return Formatter


def add_dataclass(parser, cls: type) -> dict[str, Any]:
    """Add ``--config`` and one option per field of ``cls`` (ranges appended to the help); returns the types."""
    from jsonargparse import ActionConfigFile

    parser.add_argument("--config", action=ActionConfigFile,
                        help="YAML file mirroring the sections below, or a shipped config's name (e.g. mamba_tiny)")
    parser.add_class_arguments(cls, nested_key=None, fail_untyped=True, sub_configs=False)
    bounds = _field_bounds(cls)
    for action in parser._actions:
        key = action.dest
        if key in bounds and bounds[key] and action.help:
            from .config import range_text

            action.help = f"{action.help.rstrip('.')}; {range_text(bounds[key])}."
    return field_types(cls)


def _field_bounds(cls: type, prefix: str = "") -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_field_bounds(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = f.metadata.get("bounds", {})
    return out


def build_dataclass(cls: type, values: dict[str, Any]) -> Any:
    """Construct ``cls`` (nested dataclasses included) from a plain nested dict; validation runs in each
    ``__post_init__``."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        kwargs[f.name] = build_dataclass(hints[f.name], value) if dataclasses.is_dataclass(hints[f.name]) else value
    return cls(**kwargs)


def namespace_dict(ns: Any) -> dict[str, Any]:
    """A jsonargparse Namespace -> nested dict (``config`` bookkeeping keys dropped)."""
    data = ns.as_dict() if hasattr(ns, "as_dict") else dict(ns)
    data.pop("config", None)
    data.pop("__path__", None)
    return data


def parse_into(cls: type, args: list[str] | None = None, data: dict[str, Any] | None = None,
               base: dict[str, Any] | None = None) -> Any:
    """``cls`` from, in this order of precedence (last wins): defaults, ``base`` dict, ``args`` (``--config FILE``
    and dotted options), ``data`` dict. Errors are one-line ``UserError``s."""
    from jsonargparse import ArgumentError

    parser = new_parser()
    types = add_dataclass(parser, cls)
    try:
        ns = parser.get_defaults()
        if base:
            ns = parser.parse_object(normalise_data(base, types), namespace=ns)
        if args:
            ns = parser.parse_args(resolve_config_args(normalise_args(args, types)), namespace=ns)
        if data:
            ns = parser.parse_object(normalise_data(data, types), namespace=ns)
    except ArgumentError as e:
        raise one_line_error(e, types) from None
    return build_dataclass(cls, namespace_dict(ns))
