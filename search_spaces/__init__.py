"""Search spaces: plain define-by-run functions `suggest(trial, **bounds) -> config overrides`.

A study names the spaces it uses and may override their bounds:

    search_space:
      optimizer: {lr: [1.0e-4, 3.0e-2], names: [adamw, sgd]}
      batch_size: {batch_size: [8, 64]}

Parameters are named after the config key they set ("optim.lr"), or after what is sampled
when that differs ("optim.one_minus_beta1"); the overrides returned always use config keys.
`BOUNDS` maps each numeric Optuna parameter back to the study-YAML range that sets it and the
values that range may take (search_spaces.bounds.Bound).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import optuna

from search_spaces import architecture, batch_size, optimizer, regularization, schedule
from search_spaces.bounds import Bound

SPACES: dict[str, Callable[..., dict[str, Any]]] = {
    "optimizer": optimizer.suggest,
    "batch_size": batch_size.suggest,
    "schedule": schedule.suggest,
    "regularization": regularization.suggest,
    "architecture": architecture.suggest,
}
# A parameter that is not the config key it sets: its value from the config's values. The others
# are the value of their own key. (For params_for: a known config as a trial's parameters.)
INVERSES: dict[str, Callable[[dict[str, Any]], Any]] = {
    optimizer.SGD_LR.param: lambda v: v["optim.lr"],
    optimizer.BETA1.param: lambda v: _one_minus(v["optim.beta1"]),
    optimizer.BETA2.param: lambda v: _one_minus(v["optim.beta2"]),
    optimizer.MOMENTUM.param: lambda v: _one_minus(v["optim.momentum"]),
    "optim.weight_decay_on": lambda v: v["optim.weight_decay"] > 0,
    optimizer.L2.param: lambda v: v["optim.weight_decay"],
    batch_size.BATCH_SIZE.param: lambda v: _log2("train.batch_size", v["train.batch_size"]),
    architecture.HEAD_SIZE.param: lambda v: _log2(
        "model.n_embd / model.n_head", v["model.n_embd"] / v["model.n_head"]
    ),
}
# Optuna parameter name -> its declared range; names are unique across spaces
BOUNDS: dict[str, Bound] = {
    b.param: b
    for module in (optimizer, batch_size, schedule, regularization, architecture)
    for b in module.BOUNDS
}


Suggest = Callable[[Any, dict[str, dict[str, Any]]], dict[str, Any]]


def suggest(trial: optuna.Trial, spaces: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Compose the named spaces: {space name: bounds} -> one dict of config overrides. (hpo
    composes these with a study's own suggest functions: hpo.space.)"""
    overrides: dict[str, Any] = {}
    for name, bounds in spaces.items():
        if name not in SPACES:
            raise ValueError(f"unknown search space {name!r}; valid: {', '.join(SPACES)}")
        overrides.update(SPACES[name](trial, **(bounds or {})))
    return overrides


def params_for(
    spaces: dict[str, dict[str, Any]], values: dict[str, Any], *, compose: Suggest = suggest
) -> dict[str, Any]:
    """The parameters with which `compose` (default: `suggest`) sets every config key it sets
    to its value in `values` (a config's `flat()`): how a known config, such as a study's
    baseline, is enqueued as a trial. ValueError, saying which value, when the spaces cannot
    express it. A parameter that is not one of ours is the value of the config key it is named
    after."""
    answers = _Answers(values)
    overrides = compose(answers, spaces)
    for key, value in overrides.items():
        if key not in values:
            raise ValueError(
                f"the search space sets {key!r}, which the trainer settings do not define; "
                "add it there with its fixed value"
            )
        if not _same(value, values[key]):
            raise ValueError(f"{key}={values[key]!r} is not a value this search space can set")
    return answers.params


class _Answers:
    """A stand-in for an Optuna trial that answers each suggestion from a config's values."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values, self.params = values, {}

    def _answer(self, name: str) -> Any:
        if name not in INVERSES and name not in self.values:
            raise ValueError(f"no config value answers parameter {name!r}")
        value = INVERSES[name](self.values) if name in INVERSES else self.values[name]
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        value = self._answer(name)
        if not any(_same(value, c) for c in choices):
            raise ValueError(f"{name}={value!r} is not one of its choices {list(choices)}")
        return value

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        value = self._answer(name)
        if not low <= value <= high:
            raise ValueError(f"{name}={value:g} lies outside its range [{low:g}, {high:g}]")
        return value

    suggest_int = suggest_float


def _one_minus(value: float) -> float:
    """1 - value without the float noise of the subtraction: 1 - 0.9 is 0.1, not
    0.09999999999999998 (and 1 - 0.1 gives back 0.9)."""
    return round(1 - value, 12)


def _log2(key: str, value: float) -> int:
    exponent = math.log2(value) if value > 0 else math.nan
    if not exponent.is_integer():
        raise ValueError(f"{key}={value:g} is not a power of two")
    return int(exponent)


def _same(a: Any, b: Any) -> bool:
    """Equal, up to the rounding of 1 - (1 - beta)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(a, b)
    return a == b
