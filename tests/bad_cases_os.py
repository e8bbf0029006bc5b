"""Bad-input cases of issue 20 (os), run by ``tests/test_bad_inputs.py`` like its own ``CASES``.

``CASES``: (case id, argv as a function of ``Inputs``, text the one error line must contain, exit code).
``make_inputs(root)``: writes the extra input files the cases need into ``root`` (``Inputs.root``), once per module.
"""

from __future__ import annotations

from pathlib import Path

CASES: list[tuple[str, object, str, int]] = []
OUTPUTS: tuple[str, ...] = ()
"""Names under ``Inputs.root`` that the cases would write: each must still be absent after every case."""


def make_inputs(root: Path) -> None:
    """Nothing extra yet."""
