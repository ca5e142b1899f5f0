"""Cells safe to open: what every CSV file Provisor writes does to its values.

Does: neutralise a text value that a spreadsheet would run as a formula (one starting with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return) by putting a single quote before it, so
``=HYPERLINK(...)`` from an HR feed or a target is shown as text, never evaluated.
Does not: write files, or touch numbers (a negative number is a number, not a formula).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """``value`` as a CSV cell that no spreadsheet evaluates."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_row(values: Iterable[Any]) -> list[Any]:
    return [safe_cell(value) for value in values]
