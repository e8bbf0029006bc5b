"""The option table of each ``longssm`` subcommand: every flag it takes, parsed, checked and documented in one place.

A table is built from the subcommand function's typed signature (with its docstring's ``Args:`` section) and, for
the commands that take one, the fields of its config dataclass (``config.leaf_fields``: type, default, range,
attribute docstring). There is one spelling of every flag, the one ``--help``, the README and the errors show:
- a parameter ``run_dir`` is ``--run-dir``; a field of ``EvalConfig`` (flat) is ``--max-tokens``;
- a ``RunConfig`` key is dotted as in YAML: ``--train.seq_len 64``, also written ``--train.seq_len=64`` or
  ``train.seq_len=64``; a boolean key takes true/false, or nothing for true (``--train.compile``);
- a boolean parameter is a switch: ``--overwrite`` / ``--no-overwrite``, ``--progress`` / ``--no-progress``;
- a list is comma-separated (``--lengths 16,64,256``); a repeated option is given once per value (``--grid``).

Values are coerced by ``config.coerce``, so a wrong one is the ``ConfigError`` that YAML gives (naming the key;
:meth:`OptionTable.flag_of` spells it as the flag). Unknown options come with the closest known one, and a
missing value, a missing or unexpected positional argument are one-line ``UserError`` s.
"""

from __future__ import annotations

import difflib
import inspect
import re
import textwrap
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .config import BOOL_TEXTS, FieldInfo, coerce, is_optional, leaf_fields, literal_choices, range_text, strip_optional
from .errors import UserError

HELP_WIDTH = 100
HELP_COLUMN = 34
ValueKind = Literal["required", "optional", "none"]
"""Whether an option takes a value: always, optionally (a boolean config key: bare = true) or never (a switch)."""


@dataclass(frozen=True)
class Option:
    """One flag of a subcommand."""

    flag: str
    """As typed: ``--run-dir``, ``--max-tokens``, ``--train.seq_len``."""
    key: str
    """What it sets: a parameter of the subcommand function (``run_dir``) or a config key (``train.seq_len``,
    ``max_tokens``)."""
    target: Literal["param", "config", "meta"]
    """A function parameter, a config key, or ``--config`` / ``--print-config`` of a config command."""
    type: Any
    default: Any
    doc: str
    bounds: dict[str, float] = field(default_factory=dict)
    value: ValueKind = "required"
    required: bool = False
    repeated: bool = False
    """Given once per value (``--grid A --grid B``), collected into a list."""
    section: str = "options"
    """The ``--help`` section the option is listed in."""

    @property
    def negative(self) -> str | None:
        """``--no-overwrite`` for the switch ``--overwrite``."""
        return "--no-" + self.flag[2:] if self.value == "none" and self.target != "meta" else None


@dataclass(frozen=True)
class Positional:
    name: str
    doc: str
    many: bool
    """Takes one or more values (``results: list[str]``)."""
    required: bool


@dataclass(frozen=True)
class Command:
    """What a subcommand's table is built from (``cli.COMMANDS``)."""

    function: Callable[..., None]
    config: type | None = None
    """Dataclass whose fields are options of this command (passed as ``cfg``)."""
    positional: tuple[str, ...] = ()
    """Parameters given as positional arguments."""
    flags: tuple[tuple[str, str], ...] = ()
    """(parameter or config field, flag name) where the flag is not the field's name: ``("json_out", "json")``."""
    repeated: tuple[str, ...] = ()
    """List parameters given once per value (``--grid``)."""
    switches: tuple[tuple[str, str], ...] = ()
    """(switch name, boolean config key it sets): ``("progress", "train.progress")`` for ``--no-progress``."""
    overrides: bool = False
    """Takes dotted ``RunConfig`` keys, passed to the function as ``overrides`` (a dotted dict)."""
    config_keys: tuple[str, ...] = ()
    """The fields of ``config`` that are options of this command (empty: every field)."""


@dataclass
class Parsed:
    """argv, sorted by the table: values coerced to their types."""

    params: dict[str, Any] = field(default_factory=dict)
    """Function parameter -> value (only those given)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Config key -> value, in the order given (``{"train.lr": 0.001}``; flat keys for ``EvalConfig``)."""
    config_file: str | None = None
    print_config: bool = False
    help: bool = False


def flag_name(name: str) -> str:
    """``run_dir`` -> ``--run-dir``; a dotted config key stays as in YAML: ``train.seq_len`` -> ``--train.seq_len``."""
    return f"--{name}" if "." in name else "--" + name.replace("_", "-")


def docstring_args(function: Callable) -> tuple[str, dict[str, str]]:
    """A Google-style docstring -> (its text before ``Args:``, {parameter: its description on one line})."""
    doc = inspect.getdoc(function) or ""
    head, _, args = doc.partition("\nArgs:\n")
    described: dict[str, str] = {}
    current = None
    for line in args.splitlines():
        entry = re.match(r"\s{2,}(\w+): (.*)", line)
        if entry and (current is None or len(line) - len(line.lstrip()) <= 4):
            current = entry.group(1)
            described[current] = entry.group(2).strip()
        elif current is not None and line.strip():
            described[current] += " " + line.strip()
    return head.strip(), described


INJECTED = ("cfg", "overrides", "given")
"""Parameters the command line fills itself, not options: the built config, the typed config keys (a dotted dict),
the names of the config keys the user set."""


class OptionTable:
    """The options and positional arguments of subcommand ``name``: parsing (:meth:`parse`), the flag of a key
    (:meth:`flag_of`) and the help text (:meth:`help`)."""

    def __init__(self, name: str, spec: Command) -> None:
        self.name, self.spec = name, spec
        self.description, param_docs = docstring_args(spec.function)
        self.options: list[Option] = []
        self.positionals: list[Positional] = []
        if spec.config is not None:
            self._add_meta_options(spec.config)
        self._add_parameters(param_docs)
        if spec.config is not None:
            self._add_fields([f for f in leaf_fields(spec.config) if not spec.config_keys or f.key in spec.config_keys],
                             "")
        if spec.overrides:
            from .config import RunConfig

            self._add_fields(leaf_fields(RunConfig), "Config overrides: ")
        self.by_flag: dict[str, Option] = {}
        for option in self.options:
            for flag in (option.flag, option.negative):
                if flag is not None:
                    if flag in self.by_flag:
                        raise ValueError(f"longssm {name}: flag {flag} is defined twice")
                    self.by_flag[flag] = option

    # --- building -------------------------------------------------------------------------------------------

    def _add_meta_options(self, config: type) -> None:
        if config.__name__ == "RunConfig":
            what = ("YAML file of a training config, keys as below (model:, state:, data:, train: sections), or a "
                    "shipped config's name (e.g. mamba_tiny)")
        else:
            what = "YAML file of the evaluation settings, keys as below (lengths:, metrics:, ...)"
        self.options += [
            Option("--config", "config", "meta", str | None, None, what),
            Option("--print-config", "print_config", "meta", bool, False,
                   "Print the resolved config as YAML (a valid --config file) and exit", value="none"),
        ]

    def _add_parameters(self, docs: dict[str, str]) -> None:
        renamed = dict(self.spec.flags)
        hints = typing.get_type_hints(self.spec.function)
        for name, parameter in inspect.signature(self.spec.function).parameters.items():
            if name in INJECTED:
                continue
            tp = hints[name]
            required = parameter.default is inspect.Parameter.empty
            default = None if required else parameter.default
            if name in self.spec.positional:
                many = typing.get_origin(strip_optional(tp)) is list
                self.positionals.append(Positional(name, docs.get(name, ""), many, required))
                continue
            value: ValueKind = "none" if tp is bool else "required"
            self.options.append(Option(flag_name(renamed.get(name, name)), name, "param", tp, default,
                                       docs.get(name, ""), value=value, required=required,
                                       repeated=name in self.spec.repeated))
        if self.spec.switches:
            from .config import RunConfig

            fields = {f.key: f for f in leaf_fields(RunConfig)}
            for switch, key in self.spec.switches:
                doc = f"{fields[key].doc.rstrip('.')} (sets {key})"
                self.options.append(Option(flag_name(switch), key, "config", bool, fields[key].default, doc,
                                           value="none"))

    def _add_fields(self, fields: list[FieldInfo], section_prefix: str) -> None:
        renamed = dict(self.spec.flags)
        for info in fields:
            dotted = "." in info.key
            value: ValueKind = "required"
            if info.type is bool:
                value = "optional" if dotted else "none"
            title = section_prefix + _first_line(info.owner.__doc__ or "").replace("``", "")
            self.options.append(Option(flag_name(renamed.get(info.key, info.key)), info.key, "config", info.type,
                                       info.default, info.doc, info.bounds, value, section=title))

    # --- parsing ----------------------------------------------------------------------------------------------

    def parse(self, argv: list[str]) -> Parsed:
        """Sort ``argv`` into parameters, config values and positional arguments (see the module docstring)."""
        parsed, loose = Parsed(), []
        i = 0
        while i < len(argv):
            token, i = argv[i], i + 1
            if token in ("-h", "--help"):
                parsed.help = True
                return parsed
            if token == "--":
                loose += argv[i:]
                break
            flag, eq, inline = token.partition("=")
            if not token.startswith("--") and eq and "." in flag and not flag.startswith("-"):
                flag, token = "--" + flag, "--" + token  # train.lr=1e-3
            if not token.startswith("--"):
                if token.startswith("-") and not _is_number(token):
                    raise UserError(f"unknown option {token}{self._suggestion(token)}")
                loose.append(token)
                continue
            option = self._lookup(flag)
            if option.value == "none":
                if eq:
                    raise UserError(f"{flag} takes no value ({option.flag} / {option.negative} switch it)")
                self._store(parsed, option, flag == option.flag)
                continue
            if eq:
                value = inline
            elif i < len(argv) and not argv[i].startswith("--") and (
                    option.value == "required" or argv[i].strip().lower() in BOOL_TEXTS):
                value, i = argv[i], i + 1
            elif option.value == "optional":
                value = "true"
            else:
                raise UserError(f"{flag} needs a value")
            self._store(parsed, option, value)
        self._assign_positionals(parsed, loose)
        missing = [o.flag for o in self.options if o.required and o.key not in parsed.params]
        if missing and not parsed.print_config:
            raise UserError(f"missing option{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        return parsed

    def _lookup(self, flag: str) -> Option:
        option = self.by_flag.get(flag)
        if option is not None:
            return option
        if "." in flag and any("." in o.key for o in self.options if o.target == "config"):
            from .config import RunConfig, known_keys, suggest_key

            key = flag.removeprefix("--")
            close = suggest_key(key, known_keys(RunConfig))
            raise UserError(f"unknown config key {key!r}" + (f" (did you mean {close}?)" if close else ""))
        raise UserError(f"unknown option {flag}{self._suggestion(flag)}")

    def _suggestion(self, flag: str) -> str:
        spelled = flag_name(flag.lstrip("-"))  # --run_dir -> --run-dir
        if spelled in self.by_flag:
            return f" (did you mean {spelled}?)"
        close = difflib.get_close_matches(flag, [*self.by_flag, "--help"], n=1, cutoff=0.6)
        return f" (did you mean {close[0]}?)" if close else ""

    def _store(self, parsed: Parsed, option: Option, value: Any) -> None:
        if option.target == "meta":
            if option.key == "config":
                parsed.config_file = value
            else:
                parsed.print_config = True
        elif option.target == "config":
            parsed.config[option.key] = coerce(value, option.type, option.key)
        elif option.repeated:
            parsed.params.setdefault(option.key, []).append(coerce(value, typing.get_args(strip_optional(
                option.type))[0], option.key))
        else:
            parsed.params[option.key] = coerce(value, option.type, option.key)

    def _assign_positionals(self, parsed: Parsed, loose: list[str]) -> None:
        for positional in self.positionals:
            if not loose:
                if positional.required and not parsed.print_config:
                    what = positional.doc.rstrip(".")
                    raise UserError(f"missing argument: {positional.name}" + (f" ({what[:1].lower()}{what[1:]})"
                                                                             if what else ""))
                break
            taken, loose = (loose, []) if positional.many else (loose[:1], loose[1:])
            parsed.params[positional.name] = taken if positional.many else taken[0]
        if loose:
            hint = f" (a config file is given as --config {loose[0]})" if loose[0].endswith((".yaml", ".yml")) else ""
            raise UserError(f"unexpected argument {loose[0]!r}{hint}")

    def flag_of(self, key: str) -> str:
        """The flag that sets ``key`` (a parameter or config key): how the command line names it in errors."""
        for option in self.options:
            if option.key == key and option.target != "meta" and option.flag != "--progress":
                return option.flag
        return flag_name(key)

    # --- help -------------------------------------------------------------------------------------------------

    def help(self) -> str:
        """The ``--help`` text: usage, description, positional arguments and every option by section."""
        usage = f"usage: longssm {self.name}"
        usage += "".join(f" {p.name}{' ...' if p.many else ''}" if p.required else f" [{p.name}]"
                         for p in self.positionals)
        usage += " [options]" + (" [--KEY VALUE | KEY=VALUE ...]" if self.spec.overrides else "")
        lines = [usage, "", *_wrap(self.description), ""]
        if self.positionals:
            lines += ["positional arguments:"] + [_entry(p.name, p.doc) for p in self.positionals] + [""]
        sections: dict[str, list[Option]] = {}
        for option in self.options:
            sections.setdefault(option.section, []).append(option)
        for title, options in sections.items():
            lines.append(f"{title}:")
            if title == "options":
                lines.append(_entry("-h, --help", "Show this help and exit."))
            lines += [_entry(_invocation(o), _option_doc(o)) for o in options]
            lines.append("")
        lines += _wrap(self._footer())
        return "\n".join(lines).rstrip() + "\n"

    def _footer(self) -> str:
        if self.spec.overrides:
            return ("Every config key (dotted as in YAML config files: model.*, state.*, data.*, train.*) overrides"
                    " the config of every run: --KEY VALUE, --KEY=VALUE or KEY=VALUE, e.g. --train.steps 500 or "
                    "model.d_model=64. Lists are comma-separated; a boolean key takes true or false.")
        if self.spec.config is not None and self.spec.config.__name__ == "RunConfig":
            return ("Config keys are dotted as in the YAML file: --KEY VALUE, --KEY=VALUE or KEY=VALUE (e.g. "
                    "--train.lr 1e-3 or train.lr=1e-3); lists are comma-separated; a boolean key takes true or "
                    "false (alone: true). Later options override --config.")
        lists = [o.flag for o in self.options if typing.get_origin(strip_optional(o.type)) is list and not o.repeated]
        return f"Lists are comma-separated (e.g. {lists[0]} a,b,c)." if lists else ""


def _first_line(text: str) -> str:
    return " ".join(text.strip().split("\n\n")[0].split()).rstrip(".")


def _is_number(text: str) -> bool:
    """``-5``, ``-0.1``, ``-1e-3``: a value, not an option."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _invocation(option: Option) -> str:
    """``--run-dir RUN_DIR``, ``--overwrite, --no-overwrite``, ``--model.scan {auto,chunked,...}``."""
    if option.value == "none":
        return ", ".join(f for f in (option.flag, option.negative) if f)
    choices = literal_choices(option.type)
    metavar = "{" + ",".join(map(str, choices)) + "}" if choices else option.key.rsplit(".", 1)[-1].upper()
    if option.flag == "--config":
        metavar = "FILE"
    if option.value == "optional":
        metavar = "[true|false]"
    return f"{option.flag} {metavar}"


def type_name(tp: Any) -> str:
    """``int | None`` -> ``int | null``; ``list[int]`` -> ``list[int]``; ``Literal['a', 'b']`` -> ``str``."""
    if is_optional(tp):
        return type_name(strip_optional(tp)) + " | null"
    if literal_choices(tp):
        return "str"
    if typing.get_origin(tp) is list:
        return f"list[{type_name(typing.get_args(tp)[0])}] (comma-separated)"
    return getattr(tp, "__name__", str(tp))


def value_text(value: Any) -> str:
    """A default as the user would type it: ``None`` -> ``null``, ``[0.0, 0.5]`` -> ``0,0.5``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(value_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _option_doc(option: Option) -> str:
    doc = option.doc.rstrip(".")
    if option.bounds:
        doc += f"; {range_text(option.bounds)}"
    if option.target == "meta":
        return doc + "."
    if option.value == "none":
        return f"{doc}. (default: {'on' if option.default else 'off'})"
    kind = "required" if option.required else f"default: {value_text(option.default)}"
    if option.repeated:
        return f"{doc}. (type: {type_name(typing.get_args(strip_optional(option.type))[0])}, repeatable)"
    return f"{doc}. (type: {type_name(option.type)}, {kind})"


def _entry(invocation: str, doc: str) -> str:
    """One option of ``--help``: the invocation, then its doc wrapped in the second column."""
    indent = " " * HELP_COLUMN
    text = textwrap.fill(doc.replace("``", ""), HELP_WIDTH, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False)
    head = f"  {invocation}"
    if len(head) < HELP_COLUMN - 1:
        return head + text[len(head):]
    return head + "\n" + text


def _wrap(text: str) -> list[str]:
    """Paragraphs (separated by blank lines) wrapped to ``HELP_WIDTH``, a blank line between them."""
    lines: list[str] = []
    for paragraph in (p for p in text.split("\n\n") if p.strip()):
        lines += [*([""] if lines else []), *textwrap.wrap(" ".join(paragraph.split()), HELP_WIDTH,
                                                            break_on_hyphens=False)]
    return lines
