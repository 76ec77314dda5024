"""Batch size: powers of two, sampled through the exponent so the sampler sees an ordered int."""

from __future__ import annotations

import math
from typing import Any

import optuna

from search_spaces.bounds import check_power_of_two_range


def suggest(trial: optuna.Trial, *, batch_size: tuple[int, int] = (8, 64)) -> dict[str, Any]:
    low, high = check_power_of_two_range("batch_size.batch_size", batch_size)
    exponent = trial.suggest_int("train.batch_size_log2", int(math.log2(low)), int(math.log2(high)))
    return {"train.batch_size": 2**exponent}
