"""Batch size: powers of two, sampled through the exponent so the sampler sees an ordered int."""

from __future__ import annotations

import math
from typing import Any

import optuna

from search_spaces.bounds import Bound

BATCH_SIZE = Bound("batch_size", "batch_size", "train.batch_size_log2", low=1, kind="power_of_two")
BOUNDS = (BATCH_SIZE,)


def suggest(trial: optuna.Trial, *, batch_size: tuple[int, int] = (8, 64)) -> dict[str, Any]:
    low, high = BATCH_SIZE.check(batch_size)
    exponent = trial.suggest_int(BATCH_SIZE.param, int(math.log2(low)), int(math.log2(high)))
    return {"train.batch_size": 2**exponent}
