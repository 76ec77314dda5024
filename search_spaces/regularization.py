"""Regularization: dropout and label smoothing. A bound set to None is not tuned."""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces.bounds import Bound

# probabilities in [0, 1): 1 would drop (or smooth away) everything
DROPOUT = Bound("regularization", "dropout", "model.dropout", low=0.0, high=1.0, high_open=True)
LABEL_SMOOTHING = Bound(
    "regularization", "label_smoothing", "train.label_smoothing", low=0.0, high=1.0, high_open=True
)
BOUNDS = (DROPOUT, LABEL_SMOOTHING)


def suggest(
    trial: optuna.Trial,
    *,
    dropout: tuple[float, float] | None = (0.0, 0.3),
    label_smoothing: tuple[float, float] | None = (0.0, 0.1),
) -> dict[str, Any]:
    ranges = ((DROPOUT, dropout), (LABEL_SMOOTHING, label_smoothing))
    checked = [(bound, bound.check(r)) for bound, r in ranges if r is not None]  # all, first
    return {bound.param: trial.suggest_float(bound.param, *r) for bound, r in checked}
