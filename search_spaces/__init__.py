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

from collections.abc import Callable
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
# Optuna parameter name -> its declared range; names are unique across spaces
BOUNDS: dict[str, Bound] = {
    b.param: b
    for module in (optimizer, batch_size, schedule, regularization, architecture)
    for b in module.BOUNDS
}


def suggest(trial: optuna.Trial, spaces: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Compose the named spaces: {space name: bounds} -> one dict of config overrides."""
    overrides: dict[str, Any] = {}
    for name, bounds in spaces.items():
        if name not in SPACES:
            raise ValueError(f"unknown search space {name!r}; valid: {', '.join(SPACES)}")
        overrides.update(SPACES[name](trial, **(bounds or {})))
    return overrides
