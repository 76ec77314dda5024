"""What a finished (or running) study says beyond importance: whether the search range was
right, how each parameter moves the objective, and what pruning did."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from scipy import stats

EDGE = 0.1  # the outer 10% of a range (on its own scale) counts as "at the edge"


def top_trials(
    trials: Sequence[FrozenTrial], *, minimize: bool, share: float = 0.1
) -> list[FrozenTrial]:
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    if not minimize:
        complete.reverse()
    return complete[: max(3, math.ceil(share * len(complete)))]


def range_warnings(trials: Sequence[FrozenTrial], *, minimize: bool) -> list[str]:
    """Parameters whose best trials crowd one end of the range: which bound to widen, how far.

    Positions are measured on the parameter's own scale (log for log parameters). A bound is
    flagged when the best trial and at least half of the top 10% sit in its outer 10%.
    """
    top = top_trials(trials, minimize=minimize)
    if len(top) < 3:
        return []
    warnings = []
    names = sorted({name for t in top for name in t.params})
    for name in names:
        dist = top[0].distributions.get(name)
        if not isinstance(dist, FloatDistribution | IntDistribution) or dist.low == dist.high:
            continue
        scale = np.log if dist.log else (lambda x: x)
        low, high = float(scale(dist.low)), float(scale(dist.high))
        pos = [(float(scale(t.params[name])) - low) / (high - low) for t in top if name in t.params]
        if len(pos) < 3:  # too few of the best trials have this parameter to call a pattern
            continue
        for side, near, best in (
            ("low", [p < EDGE for p in pos], pos[0] < EDGE),
            ("high", [p > 1 - EDGE for p in pos], pos[0] > 1 - EDGE),
        ):
            if best and sum(near) >= len(pos) / 2:
                warnings.append(_widen(name, dist, side, sum(near), len(pos)))
    return warnings


def _widen(name: str, dist, side: str, n_near: int, n_top: int) -> str:
    """Suggest moving the crowded bound out by half the current range (on the same scale)."""
    if dist.log:
        factor = math.sqrt(dist.high / dist.low)
        new = dist.low / factor if side == "low" else dist.high * factor
        how = f"{'divide' if side == 'low' else 'multiply'} it by {factor:.3g}"
    else:
        half = (dist.high - dist.low) / 2
        new = dist.low - half if side == "low" else dist.high + half
        how = f"move it by {half:.3g}"
    old = dist.low if side == "low" else dist.high
    scale = "log scale" if dist.log else "linear scale"
    return (
        f"{name}: {n_near} of the {n_top} best trials sit at the {side} edge of "
        f"[{dist.low:.3g}, {dist.high:.3g}] ({scale}); widen the {side} bound from {old:.3g} "
        f"to about {new:.3g} ({how})"
    )


def sensitivity(trials: Sequence[FrozenTrial]) -> pd.DataFrame:
    """Spearman rank correlation of each numeric parameter with the objective."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    rows = []
    for name in sorted({n for t in complete for n in t.params}):
        pairs = [
            (t.params[name], t.value)
            for t in complete
            if name in t.params
            and isinstance(t.params[name], int | float)
            and not isinstance(t.params[name], bool)
        ]
        if len(pairs) < 3 or len({p for p, _ in pairs}) < 2:
            continue
        rho, p_value = stats.spearmanr(*zip(*pairs, strict=True))
        rows.append(
            {"param": name, "spearman": float(rho), "p_value": float(p_value), "n": len(pairs)}
        )
    return pd.DataFrame(rows, columns=["param", "spearman", "p_value", "n"]).set_index("param")


def pruning_stats(trials: Sequence[FrozenTrial]) -> dict:
    """Trials pruned at each step (rung), and the training steps pruning saved."""
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    per_rung = Counter(t.last_step for t in pruned if t.last_step is not None)
    counted = [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "steps" in t.user_attrs
    ]
    trained = sum(t.user_attrs["steps"] for t in counted)
    full = sum(t.user_attrs.get("max_steps", t.user_attrs["steps"]) for t in counted)
    return {
        "pruned": len(pruned),
        "pruned_per_step": dict(sorted(per_rung.items())),
        "steps_trained": trained,
        "steps_without_pruning": full,
        "saved": 1 - trained / full if full else 0.0,
    }
