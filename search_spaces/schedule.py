"""Learning-rate schedule: shape, warmup from a small set, and the floor it decays to."""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces.bounds import Bound, check_choices
from trainers.config import SCHEDULES

# a fraction of the peak learning rate: 0 decays to nothing, 1 does not decay at all
MIN_LR_FRAC = Bound("schedule", "min_lr_frac", "schedule.min_lr_frac", low=0.0, high=1.0)
BOUNDS = (MIN_LR_FRAC,)


def suggest(
    trial: optuna.Trial,
    *,
    names: tuple[str, ...] = SCHEDULES,
    warmup_fracs: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1),
    min_lr_frac: tuple[float, float] | None = (0.0, 0.2),
) -> dict[str, Any]:
    names = check_choices("schedule.names", names, allowed=SCHEDULES)
    warmup_fracs = check_choices("schedule.warmup_fracs", warmup_fracs)
    if not all(isinstance(w, int | float) and 0 <= w < 1 for w in warmup_fracs):
        raise ValueError(
            f"schedule.warmup_fracs: each must be in [0, 1), but got {list(warmup_fracs)}"
        )
    if min_lr_frac is not None:
        min_lr_frac = MIN_LR_FRAC.check(min_lr_frac)

    name = trial.suggest_categorical("schedule.name", names) if len(names) > 1 else names[0]
    out: dict[str, Any] = {"schedule.name": name}
    if len(warmup_fracs) > 1:
        out["schedule.warmup_frac"] = trial.suggest_categorical(
            "schedule.warmup_frac", warmup_fracs
        )
    else:
        out["schedule.warmup_frac"] = warmup_fracs[0]
    if name != "constant" and min_lr_frac is not None:  # a constant schedule has no floor to tune
        out[MIN_LR_FRAC.param] = trial.suggest_float(MIN_LR_FRAC.param, *min_lr_frac)
    return out
