"""Optimizer: family, log-uniform learning rate, and the knobs only some families have.

Adam-family betas are sampled as log-uniform 1 - beta, so that 0.9, 0.99 and 0.999 are equally
easy to reach; SGD momentum likewise as 1 - momentum. Weight decay has an off switch, since
"none" is a real answer that a log scale cannot express.

A number that means different things in different families gets a parameter and a range of its
own, so that neither the sampler nor the importance analysis pools the meanings: SGD's learning
rate (`sgd_lr`, tens of times Adam's) apart from the Adam family's (`lr`), and the L2 penalty in
the gradient that Adam and SGD apply (`l2`) apart from AdamW's decoupled decay (`weight_decay`).
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from search_spaces.bounds import Bound, check_choices
from trainers.config import OPTIMIZERS

ADAM_FAMILY = ("adamw", "adam")

# 1 - beta in (0, 1): beta = 1 never forgets, beta = 0 is a real value but its log is not
_UNIT = {"low": 0.0, "high": 1.0, "low_open": True, "high_open": True, "log": True}
_POSITIVE = {"low": 0.0, "high": math.inf, "low_open": True, "log": True}
LR = Bound("optimizer", "lr", "optim.lr", **_POSITIVE)  # adam, adamw
SGD_LR = Bound("optimizer", "sgd_lr", "optim.sgd_lr", **_POSITIVE)
BETA1 = Bound("optimizer", "one_minus_beta1", "optim.one_minus_beta1", **_UNIT)
BETA2 = Bound("optimizer", "one_minus_beta2", "optim.one_minus_beta2", **_UNIT)
WEIGHT_DECAY = Bound("optimizer", "weight_decay", "optim.weight_decay", **_POSITIVE)  # adamw
L2 = Bound("optimizer", "l2", "optim.l2", **_POSITIVE)  # adam, sgd
MOMENTUM = Bound("optimizer", "one_minus_momentum", "optim.one_minus_momentum", **_UNIT)
BOUNDS = (LR, SGD_LR, BETA1, BETA2, WEIGHT_DECAY, L2, MOMENTUM)


def suggest(
    trial: optuna.Trial,
    *,
    lr: tuple[float, float] = (1e-4, 1e-2),
    names: tuple[str, ...] = ("adamw",),
    sgd_lr: tuple[float, float] | None = (1e-3, 1.0),
    one_minus_beta1: tuple[float, float] | None = (0.01, 0.3),
    one_minus_beta2: tuple[float, float] | None = (1e-3, 0.1),
    weight_decay: tuple[float, float] | None = (1e-3, 0.3),
    l2: tuple[float, float] | None = (1e-5, 1e-2),
    one_minus_momentum: tuple[float, float] | None = (0.01, 0.5),
) -> dict[str, Any]:
    """A bound set to None is not tuned (the trainer's value stands)."""
    names = check_choices("optimizer.names", names, allowed=OPTIMIZERS)
    given = {
        LR: lr,
        SGD_LR: sgd_lr,
        BETA1: one_minus_beta1,
        BETA2: one_minus_beta2,
        WEIGHT_DECAY: weight_decay,
        L2: l2,
        MOMENTUM: one_minus_momentum,
    }
    ranges = {b: None if value is None else b.check(value) for b, value in given.items()}
    name = trial.suggest_categorical("optim.name", names) if len(names) > 1 else names[0]
    # this family's parameters: (its range, the config key it sets, sampled as 1 - value)
    family = [(LR, "optim.lr", False), (BETA1, "optim.beta1", True), (BETA2, "optim.beta2", True)]
    if name == "sgd":
        family = [(SGD_LR, "optim.lr", False), (MOMENTUM, "optim.momentum", True)]
    out: dict[str, Any] = {"optim.name": name}
    for bound, key, one_minus in family:
        if ranges[bound] is not None:
            value = _sample(trial, bound, ranges[bound])
            out[key] = 1 - value if one_minus else value
    decay = WEIGHT_DECAY if name == "adamw" else L2  # decoupled, or a penalty in the gradient
    if ranges[decay] is not None:
        on = trial.suggest_categorical("optim.weight_decay_on", [True, False])
        out["optim.weight_decay"] = _sample(trial, decay, ranges[decay]) if on else 0.0
    return out


def _sample(trial: optuna.Trial, bound: Bound, low_high: tuple[float, float]) -> float:
    return trial.suggest_float(bound.param, *low_high, log=bound.log)
