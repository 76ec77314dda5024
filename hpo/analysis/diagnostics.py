"""What a finished (or running) study says beyond importance: which values to compare, whether
the search range was right, how each parameter moves the objective, and what pruning did."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from scipy import stats

import search_spaces
from search_spaces.bounds import Bound

EDGE = 0.1  # the outer 10% of a range (on its own scale) counts as "at the edge"
RUNG_MIN_TRIALS = 8  # a common rung must be reached by at least this many trials,
RUNG_SHARE = 0.5  # and by at least this share of the completed and pruned ones


@dataclass(frozen=True)
class TrialValues:
    """One value per trial, comparable across trials, and what it is.

    Under Hyperband most trials are pruned and the completed ones are the survivors of pruning,
    so the parameters pruning filtered on look less important among them. Comparing every
    trial at a common rung (its best value up to that step, pruned trials included) avoids
    that. Its cost: an early rung judges learning speed, not the final result. So the rung is
    the highest step that half of the trials (and at least 8) reached: when the completed
    trials are half on their own, that is the last step and their final values are compared.
    """

    trials: list[FrozenTrial]  # COMPLETE trials whose value is the compared one
    step: int | None  # the common rung; None: completed trials' final values
    n_complete: int
    n_pruned: int  # pruned trials that reached the rung

    def describe(self) -> str:
        if self.step is None:
            return f"final values of the {self.n_complete} completed trials"
        return (
            f"each trial's best value up to step {self.step} (the highest step at least "
            f"{RUNG_SHARE:.0%} of the completed and pruned trials reached): {len(self.trials)} "
            f"trials, {self.n_complete} completed and {self.n_pruned} pruned ones that reached it"
        )


def comparable_values(
    trials: Sequence[FrozenTrial], *, minimize: bool, final_only: bool = False
) -> TrialValues:
    """Trials at a common rung when pruned trials reached one, else the completed trials.

    `final_only` keeps the final values of completed trials: better when the early rungs
    are too short to tell the final quality (a rung at 5% of the budget rewards fast starters).
    """
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    step = None if final_only else common_rung(trials)
    if step is None:
        return TrialValues(complete, None, len(complete), 0)
    best = min if minimize else max
    reached = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        or (t.state == TrialState.PRUNED and t.last_step is not None and t.last_step >= step)
    ]
    view, n_pruned = [], 0
    for t in reached:
        upto = [v for s, v in t.intermediate_values.items() if s <= step and math.isfinite(v)]
        if upto or not t.intermediate_values:  # a trial that never reported keeps its value
            value = best(upto) if upto else t.value
            view.append(
                optuna.trial.create_trial(
                    value=value, params=t.params, distributions=t.distributions
                )
            )
            n_pruned += t.state == TrialState.PRUNED
    return TrialValues(view, step, len(view) - n_pruned, n_pruned)


def pruned_before(trials: Sequence[FrozenTrial], step: int | None) -> int:
    """How many pruned trials stopped before `step` (the common rung; None: every pruned
    trial, since then only completed trials are compared)."""
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if step is None:
        return len(pruned)
    return sum(t.last_step is None or t.last_step < step for t in pruned)


def common_rung(trials: Sequence[FrozenTrial]) -> int | None:
    """The highest step that enough trials reached (completed trials count as reaching every
    step), among those pruned trials reported. None when the completed trials are enough on
    their own: then the highest such step is the last one, and final values are compared."""
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    pruned_last = [
        t.last_step for t in trials if t.state == TrialState.PRUNED and t.last_step is not None
    ]
    needed = max(RUNG_MIN_TRIALS, math.ceil(RUNG_SHARE * (complete + len(pruned_last))))
    if complete >= needed:
        return None
    steps = {s for t in trials if t.state == TrialState.PRUNED for s in t.intermediate_values}
    for step in sorted(steps, reverse=True):
        if complete + sum(last >= step for last in pruned_last) >= needed:
            return step
    return None


def top_trials(
    trials: Sequence[FrozenTrial], *, minimize: bool, share: float = 0.1
) -> list[FrozenTrial]:
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    if not minimize:
        complete.reverse()
    return complete[: max(3, math.ceil(share * len(complete)))]


@dataclass(frozen=True)
class RangeWarning:
    """The best trials crowd one end of a parameter's range, and what to do about it."""

    param: str
    side: str  # "low" or "high"
    bound: Bound | None  # the search space's declaration; None for a parameter hpo did not make
    current: tuple[float, float]  # the range, in the study's units
    suggested: tuple[float, float] | None  # the widened range; None: at the hard bound
    message: str

    def __str__(self) -> str:
        return self.message


def range_warnings(trials: Sequence[FrozenTrial], *, minimize: bool) -> list[RangeWarning]:
    """Parameters whose best trials crowd one end of the range: which bound to widen, how far.

    Positions are measured on the parameter's own scale (log for log parameters). A bound is
    flagged when the best trial and at least half of the top 10% sit in its outer 10% (for a
    conditional parameter: the best of those top trials that have it).
    """
    top = top_trials(trials, minimize=minimize)
    if len(top) < 3:
        return []
    warnings = []
    for name in sorted({name for t in top for name in t.params}):
        dist = next(t.distributions[name] for t in top if name in t.params)
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
                warnings.append(_warning(name, dist, side, sum(near), len(pos)))
    return warnings


def _warning(name: str, dist, side: str, n_near: int, n_top: int) -> RangeWarning:
    bound = search_spaces.BOUNDS.get(name)
    scale = "log scale" if dist.log else "linear scale"
    crowd = f"{name}: {n_near} of the {n_top} best trials sit at the {side} edge of"
    if bound is None:  # not one of ours: no domain known, the plain half-range step
        new = _step_out(dist, side)
        old = dist.low if side == "low" else dist.high
        message = (
            f"{crowd} [{dist.low:.3g}, {dist.high:.3g}] ({scale}); widen the {side} bound "
            f"from {old:.3g} to about {new:.3g} ({_how(dist, side)})"
        )
        current = (dist.low, dist.high)
        suggested = (new, dist.high) if side == "low" else (dist.low, new)
        return RangeWarning(name, side, None, current, suggested, message)
    current = (bound.to_bound(dist.low), bound.to_bound(dist.high))
    scale = "powers of two" if bound.kind == "power_of_two" else scale
    where = f"{crowd} {bound.key} = {_pair(bound, current)} ({scale})"
    new = widened(bound, dist, side)
    if new is None:
        edge = bound.low if side == "low" else bound.high
        message = (
            f"{where}; the optimum may sit at the hard bound: {bound.name} cannot go "
            f"{'below' if side == 'low' else 'above'} {edge:g}"
        )
        return RangeWarning(name, side, bound, current, None, message)
    suggested = (new, current[1]) if side == "low" else (current[0], new)
    message = f"{where}; widen it to {_pair(bound, suggested)}"
    if not bound.accepts(_step_out(dist, side, bound)):
        message += f" (it must lie in {bound.domain()})"
    return RangeWarning(name, side, bound, current, suggested, message)


def widened(bound: Bound, dist, side: str) -> float | None:
    """The `side` bound moved out by half the range (on the sampled scale), kept inside the
    hard domain and rounded to a value the space accepts; None if it cannot move."""
    old = bound.to_bound(dist.low if side == "low" else dist.high)
    new = _step_out(dist, side, bound)
    if not bound.accepts(new):
        edge = bound.low if side == "low" else bound.high
        if bound.accepts(edge):  # a closed edge: go to it
            new = edge
        elif dist.log and edge > 0:  # an open edge: halfway there, on the same scale
            new = math.sqrt(old * edge)
        else:
            new = (old + edge) / 2
    if bound.kind == "float":  # the shortest number that still widens and stays inside
        for digits in range(1, 8):
            rounded = float(f"{new:.{digits}g}")
            if bound.accepts(rounded) and (rounded < old if side == "low" else rounded > old):
                return rounded
    return None if new == old else new


def _step_out(dist, side: str, bound: Bound | None = None) -> float:
    """Half the range further out on the parameter's own scale, in the study's units
    (rounded out to a whole step for an integer parameter)."""
    if dist.log:
        factor = math.sqrt(dist.high / dist.low)
        new = dist.low / factor if side == "low" else dist.high * factor
    else:
        half = (dist.high - dist.low) / 2
        new = dist.low - half if side == "low" else dist.high + half
    if isinstance(dist, IntDistribution):
        new = math.floor(new) if side == "low" else math.ceil(new)
    return bound.to_bound(new) if bound is not None else new


def _how(dist, side: str) -> str:
    if dist.log:
        factor = math.sqrt(dist.high / dist.low)
        return f"{'divide' if side == 'low' else 'multiply'} it by {factor:.3g}"
    return f"move it by {(dist.high - dist.low) / 2:.3g}"


def _pair(bound: Bound, pair: tuple[float, float]) -> str:
    if bound.kind == "float":
        return f"[{pair[0]:.4g}, {pair[1]:.4g}]"
    return f"[{int(pair[0])}, {int(pair[1])}]"


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
