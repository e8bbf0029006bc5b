"""Compare a benchmark's figures with targets read from a file (``--targets``); no script hard-codes a target.

A targets file maps each script to named targets. A target picks figures by a dotted path into the script's
JSON object, where ``*`` (or any ``fnmatch`` pattern) stands for every key at that level, and bounds them with
``min`` and/or ``max``:

    {"scan": {"scan_max_rel_err_le_1e-5": {"figure": "scan.max_rel_err", "max": 1e-5}}}

A target is true when every figure it picks lies within its bounds, false when one does not, and null when it
picks no figure or one of them is null (a peer that is not installed): never guessed.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

BOUNDS = ("min", "max")


def load(path: Path, script: str) -> dict[str, dict[str, Any]]:
    """The targets of ``script`` in the file at ``path`` (ValueError for a malformed target)."""
    section = json.loads(Path(path).read_text(encoding="utf-8")).get(script, {})
    for name, target in section.items():
        keys = set(target)
        if "figure" not in keys or not keys & set(BOUNDS) or keys - {"figure", *BOUNDS}:
            raise ValueError(f"{path}: target {script}.{name} needs 'figure' and 'min' and/or 'max'; got {target}")
    return section


def pick(tree: Any, path: str) -> list[Any]:
    """The values at the dotted ``path`` in nested dicts; a path part may be an fnmatch pattern."""
    nodes = [tree]
    for part in path.split("."):
        nodes = [v for node in nodes if isinstance(node, dict) for k, v in node.items() if fnmatch.fnmatchcase(k, part)]
    return nodes


def check(result: dict[str, Any], target: dict[str, Any]) -> bool | None:
    """Whether every figure that ``target`` picks from ``result`` is within its bounds; None when unknown."""
    values = pick(result, target["figure"])
    if not values or any(not isinstance(v, (int, float)) for v in values):
        return None
    low, high = target.get("min", float("-inf")), target.get("max", float("inf"))
    return all(low <= v <= high for v in values)


def check_all(result: dict[str, Any], targets: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """{target name: check(result, target)}."""
    return {name: check(result, target) for name, target in targets.items()}
