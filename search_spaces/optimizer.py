"""Optimizer: family, log-uniform learning rate, and the knobs only some families have.

Adam-family betas are sampled as log-uniform 1 - beta, so that 0.9, 0.99 and 0.999 are equally
easy to reach; SGD momentum likewise as 1 - momentum. Weight decay has an off switch, since
"none" is a real answer that a log scale cannot express.
"""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces.bounds import check_choices, check_range
from trainers.config import OPTIMIZERS

ADAM_FAMILY = ("adamw", "adam")


def suggest(
    trial: optuna.Trial,
    *,
    lr: tuple[float, float] = (1e-4, 1e-2),
    names: tuple[str, ...] = ("adamw",),
    one_minus_beta1: tuple[float, float] | None = (0.01, 0.3),
    one_minus_beta2: tuple[float, float] | None = (1e-3, 0.1),
    weight_decay: tuple[float, float] | None = (1e-3, 0.3),
    one_minus_momentum: tuple[float, float] | None = (0.01, 0.5),
) -> dict[str, Any]:
    """A bound set to None is not tuned (the trainer's value stands)."""
    lr = check_range("optimizer.lr", lr, log=True)
    names = check_choices("optimizer.names", names, allowed=OPTIMIZERS)
    if one_minus_beta1 is not None:
        one_minus_beta1 = _unit_log_range("optimizer.one_minus_beta1", one_minus_beta1)
    if one_minus_beta2 is not None:
        one_minus_beta2 = _unit_log_range("optimizer.one_minus_beta2", one_minus_beta2)
    if weight_decay is not None:
        weight_decay = check_range("optimizer.weight_decay", weight_decay, log=True)
    if one_minus_momentum is not None:
        one_minus_momentum = _unit_log_range("optimizer.one_minus_momentum", one_minus_momentum)

    name = trial.suggest_categorical("optim.name", names) if len(names) > 1 else names[0]
    out: dict[str, Any] = {
        "optim.name": name,
        "optim.lr": trial.suggest_float("optim.lr", *lr, log=True),
    }
    if name in ADAM_FAMILY:
        if one_minus_beta1 is not None:
            out["optim.beta1"] = 1 - trial.suggest_float(
                "optim.one_minus_beta1", *one_minus_beta1, log=True
            )
        if one_minus_beta2 is not None:
            out["optim.beta2"] = 1 - trial.suggest_float(
                "optim.one_minus_beta2", *one_minus_beta2, log=True
            )
    if name == "sgd" and one_minus_momentum is not None:
        out["optim.momentum"] = 1 - trial.suggest_float(
            "optim.one_minus_momentum", *one_minus_momentum, log=True
        )
    if weight_decay is not None:
        on = trial.suggest_categorical("optim.weight_decay_on", [True, False])
        out["optim.weight_decay"] = (
            trial.suggest_float("optim.weight_decay", *weight_decay, log=True) if on else 0.0
        )
    return out


def _unit_log_range(where: str, bounds) -> tuple[float, float]:
    low, high = check_range(where, bounds, log=True)
    if high >= 1:
        raise ValueError(f"{where}: 1 - beta must stay below 1, but got high={high}")
    return low, high
