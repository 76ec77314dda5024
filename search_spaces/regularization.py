"""Regularization: dropout and label smoothing. A bound set to None is not tuned."""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces.bounds import check_range


def suggest(
    trial: optuna.Trial,
    *,
    dropout: tuple[float, float] | None = (0.0, 0.3),
    label_smoothing: tuple[float, float] | None = (0.0, 0.1),
) -> dict[str, Any]:
    for where, bounds in (("dropout", dropout), ("label_smoothing", label_smoothing)):
        if bounds is not None:
            low, high = check_range(f"regularization.{where}", bounds)
            if low < 0 or high >= 1:
                raise ValueError(
                    f"regularization.{where}: must lie in [0, 1), but got {list(bounds)}"
                )
    out: dict[str, Any] = {}
    if dropout is not None:
        out["model.dropout"] = trial.suggest_float("model.dropout", *dropout)
    if label_smoothing is not None:
        out["train.label_smoothing"] = trial.suggest_float(
            "train.label_smoothing", *label_smoothing
        )
    return out
