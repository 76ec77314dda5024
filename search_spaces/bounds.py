"""Checks for the bounds a study passes to a search space, so a bad study fails before it runs.

Each error names the space, the bound and the bad value, e.g.
"optimizer.lr: low must be below high, but got low=0.1, high=0.01".

Each space also declares its tunable ranges as `Bound`s next to its `suggest`: the study-YAML
key, the Optuna parameter it becomes, and the hard domain of its values. The space checks its
bounds against that declaration, and hpo.analysis.diagnostics reads the same declaration to advise a
wider range that the space will accept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal


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


@dataclass(frozen=True)
class Bound:
    """One tunable [low, high] range of a search space.

    `name` is both the keyword of the space's `suggest` and the key a study writes under
    `search_space.<space>`; `param` is the Optuna parameter it is sampled as. The hard domain
    (`low`, `high`, open or closed at each end) is what the space accepts, in the bound's own
    units. A power-of-two bound is sampled as its base-2 exponent, so `param` counts that.
    """

    space: str
    name: str
    param: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    kind: Literal["float", "int", "power_of_two"] = "float"
    log: bool = False  # sampled on a log scale

    @property
    def key(self) -> str:
        """Where a study sets this range: search_space.optimizer.one_minus_beta1."""
        return f"search_space.{self.space}.{self.name}"

    def to_bound(self, sampled: float) -> float:
        """A sampled value in the bound's units (2**exponent for a power of two)."""
        return 2**sampled if self.kind == "power_of_two" else sampled

    def accepts(self, value: float) -> bool:
        """Whether `value` lies in the hard domain."""
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def domain(self) -> str:
        """The hard domain as an interval: (0, 1), [0, 1), [1, inf)."""
        return (
            f"{'(' if self.low_open or math.isinf(self.low) else '['}{self.low:g}, "
            f"{self.high:g}{')' if self.high_open or math.isinf(self.high) else ']'}"
        )

    def check(self, bounds: Any) -> tuple:
        """A study's [low, high] for this range, checked, as a (low, high) tuple."""
        where = f"{self.space}.{self.name}"
        if self.kind == "power_of_two":
            low, high = check_power_of_two_range(where, bounds)
        else:
            low, high = check_range(where, bounds, log=self.log, integer=self.kind == "int")
        if not (self.accepts(low) and self.accepts(high)):
            raise ValueError(f"{where}: must lie in {self.domain()}, but got {[low, high]}")
        return low, high
