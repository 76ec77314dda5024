"""Checks for the bounds a study passes to a search space, so a bad study fails before it runs.

Each error names the space, the bound and the bad value, e.g.
"optimizer.lr: low must be below high, but got low=0.1, high=0.01".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def check_range(where: str, bounds: Any, *, log: bool = False, integer: bool = False) -> tuple:
    """A (low, high) pair with low < high; positive for log scales; whole numbers if integer."""
    if not isinstance(bounds, Sequence) or isinstance(bounds, str) or len(bounds) != 2:
        raise ValueError(f"{where}: expected [low, high], but got {bounds!r}")
    low, high = (_number(b) for b in bounds)
    kind = int if integer else (int, float)
    if not all(isinstance(b, kind) and not isinstance(b, bool) for b in (low, high)):
        noun = "whole numbers" if integer else "numbers"
        raise ValueError(f"{where}: low and high must be {noun}, but got {bounds!r}")
    if not all(math.isfinite(b) for b in (low, high)):
        raise ValueError(f"{where}: bounds must be finite, but got {bounds!r}")
    if low >= high:
        raise ValueError(f"{where}: low must be below high, but got low={low}, high={high}")
    if log and low <= 0:
        raise ValueError(f"{where}: a log-scale range needs low > 0, but got low={low}")
    return low, high


def check_choices(where: str, choices: Any, *, allowed: Sequence | None = None) -> tuple:
    """A non-empty list of distinct choices, each in `allowed` when given."""
    if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
        raise ValueError(f"{where}: expected a non-empty list of choices, but got {choices!r}")
    if len(set(choices)) != len(choices):
        raise ValueError(f"{where}: choices must be distinct, but got {list(choices)}")
    if allowed is not None:
        bad = [c for c in choices if c not in allowed]
        if bad:
            raise ValueError(
                f"{where}: unknown choice {bad[0]!r}; valid: {', '.join(map(str, allowed))}"
            )
    return tuple(choices)


def check_power_of_two_range(where: str, bounds: Any) -> tuple[int, int]:
    low, high = check_range(where, bounds, integer=True, log=True)
    for b in (low, high):
        if b & (b - 1):
            raise ValueError(f"{where}: bounds must be powers of two, but got {b}")
    return low, high


def _number(value: Any) -> Any:
    """YAML reads 1e-4 (no dot) as a string: accept any string that is a number."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return (
            int(number)
            if number.is_integer() and "." not in value and "e" not in value.lower()
            else number
        )
    return value
