"""Hyperparameter importance with uncertainty, from Optuna's own evaluators.

One importance number hides how much it would move with another evaluator seed or a few more
trials. Here the evaluator runs on bootstrap resamples of the completed trials, each with its
own seed, and each parameter gets a percentile interval. Two parameters whose intervals overlap
have no trustworthy order, and the ranking says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial

EVALUATORS = ("fanova", "ped-anova")


def make_evaluator(name: str, seed: int) -> optuna.importance.BaseImportanceEvaluator:
    if name == "fanova":
        return optuna.importance.FanovaImportanceEvaluator(n_trees=32, seed=seed)
    if name == "ped-anova":
        return optuna.importance.PedAnovaImportanceEvaluator()
    raise ValueError(f"unknown evaluator {name=}; valid: {', '.join(EVALUATORS)}")


def importance_intervals(
    trials: Sequence[FrozenTrial],
    *,
    direction: optuna.study.StudyDirection,
    evaluator: str = "fanova",
    n_resamples: int = 20,
    level: float = 0.9,
    seed: int = 0,
) -> pd.DataFrame:
    """Importance per parameter: mean, [low, high] percentile interval, rank, and `unstable`
    (its interval overlaps a neighbour's in the ranking). Rows sorted by mean, highest first.

    `trials` are completed trials; parameters missing from some trials (conditional ones) are
    left out, as Optuna's evaluators do.
    """
    rng = np.random.default_rng(seed)
    trials = list(trials)
    samples: list[dict[str, float]] = []
    for i in range(n_resamples):
        # the first replicate is the data as it is; the rest are bootstrap resamples
        picked = (
            trials if i == 0 else [trials[j] for j in rng.integers(0, len(trials), len(trials))]
        )
        study = optuna.create_study(direction=direction)
        study.add_trials(picked)
        try:
            samples.append(
                optuna.importance.get_param_importances(
                    study, evaluator=make_evaluator(evaluator, seed + i)
                )
            )
        except (RuntimeError, ValueError):  # a resample with a single distinct value, say
            continue
    if not samples:
        raise ValueError("importance could not be computed on these trials")
    table = pd.DataFrame(samples).fillna(0.0)
    alpha = (1 - level) / 2
    out = pd.DataFrame(
        {
            "importance": table.mean(),
            "low": table.quantile(alpha),
            "high": table.quantile(1 - alpha),
        }
    ).sort_values("importance", ascending=False)
    out["rank"] = range(1, len(out) + 1)
    lows, highs = out["low"].to_numpy(), out["high"].to_numpy()
    unstable = np.zeros(len(out), dtype=bool)
    for i in range(len(out) - 1):
        if lows[i] <= highs[i + 1]:  # the next one down could be above this one
            unstable[i] = unstable[i + 1] = True
    out["unstable"] = unstable
    out.index.name = "param"
    return out
