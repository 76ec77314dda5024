"""Hyperparameter importance with uncertainty, from Optuna's own evaluators.

One importance number hides how much it would move with another evaluator seed or a few more
trials. Here the evaluator runs on bootstrap resamples, each with its own seed, and each
parameter gets a percentile interval. Importances are shares that add up to 1, so two
overlapping intervals say little about order; the order is judged on the resamples themselves:
how often a parameter outranks the next one down, and the interval of its rank. Resamples on
which the evaluator fails are counted and reported, never dropped silently.

Conditional parameters (Adam's betas only under Adam, the decay floor only for a decaying
schedule) need care. Optuna's evaluators score only the parameters present in every trial they
are given: on a mixed set a conditional parameter drops out of some resamples, and the ones
that stay are credited with its effect. So trials are first grouped by their *condition*, the
exact set of parameters they have (one branch of a define-by-run space), and each parameter is
scored inside the largest condition in which it varies. The resampling stays inside that
condition, so every resample scores the same parameters and nothing is filled in with 0. Each
row says which condition it was scored on and on how many trials. Categorical switches (the
optimizer family, weight decay on/off) are constant inside a condition; `condition_summary`
compares the conditions themselves instead.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial

EVALUATORS = ("fanova", "ped-anova")
MIN_TRIALS = 8  # on fewer trials an evaluator's importances say nothing
# a 90% percentile interval reads its 5% tails: 100 resamples leave 5 replicates in each
N_RESAMPLES = 100
METHOD = (
    "importance is scored within conditions (trials that have exactly the same parameters): "
    "for each parameter, the largest condition in which it varies, resampling that condition's "
    "trials only"
)


def make_evaluator(name: str, seed: int) -> optuna.importance.BaseImportanceEvaluator:
    if name == "fanova":
        return optuna.importance.FanovaImportanceEvaluator(n_trees=32, seed=seed)
    if name == "ped-anova":
        return optuna.importance.PedAnovaImportanceEvaluator()
    raise ValueError(f"unknown evaluator {name=}; valid: {', '.join(EVALUATORS)}")


@dataclass(frozen=True)
class Condition:
    """Trials that all have exactly the same parameters: one branch of the search space."""

    label: str  # what sets it apart: "optim.name in {adam, adamw}", or "all trials"
    params: tuple[str, ...]  # present in every one of its trials
    trials: tuple[FrozenTrial, ...]

    def varied(self) -> list[str]:
        """The parameters that take more than one value here: the only ones it can score."""
        return [p for p in self.params if len({t.params[p] for t in self.trials}) > 1]


def conditions(trials: Sequence[FrozenTrial]) -> list[Condition]:
    """The trials grouped by their set of parameters, largest group first."""
    groups: dict[frozenset[str], list[FrozenTrial]] = defaultdict(list)
    for t in trials:
        groups[frozenset(t.params)].append(t)
    ordered = sorted(groups.items(), key=lambda g: (-len(g[1]), -len(g[0]), sorted(g[0])))
    switches = _switches(trials)
    return [
        Condition(
            "all trials" if len(groups) == 1 else _label(names, members, trials, switches),
            tuple(sorted(names)),
            tuple(members),
        )
        for names, members in ordered
    ]


def scopes(trials: Sequence[FrozenTrial]) -> dict[str, Condition]:
    """Each parameter's scope: the largest condition in which it takes more than one value.
    A parameter that varies in no condition (a switch between conditions) has none."""
    out: dict[str, Condition] = {}
    for condition in conditions(trials):  # largest first, so the first one found wins
        for name in condition.varied():
            out.setdefault(name, condition)
    return out


def unscored(trials: Sequence[FrozenTrial], *, min_trials: int = MIN_TRIALS) -> dict[str, str]:
    """The parameters `importance_intervals` leaves out, each with the reason."""
    found = scopes(trials)
    out = {}
    for name in sorted({p for t in trials for p in t.params}):
        scope = found.get(name)
        if len({t.params[name] for t in trials if name in t.params}) == 1:
            out[name] = "it took one value in every trial"
        elif scope is None:
            out[name] = "constant within every condition (it chooses between them)"
        elif len(scope.trials) < min_trials:
            out[name] = (
                f"varies in at most {len(scope.trials)} trials of one condition "
                f"({scope.label}); importance needs {min_trials}"
            )
    return out


def importance_intervals(
    trials: Sequence[FrozenTrial],
    *,
    direction: optuna.study.StudyDirection,
    evaluator: str = "fanova",
    n_resamples: int = N_RESAMPLES,
    level: float = 0.9,
    seed: int = 0,
    min_trials: int = MIN_TRIALS,
) -> pd.DataFrame:
    """Importance per parameter and condition: mean, [low, high] percentile interval, and the
    `scope` (condition) and `n_trials` it was scored on.

    The conditions scored are each parameter's largest one (see `scopes`), with every
    parameter that varies there, so a parameter may have a row in more than one; its first row
    is its largest condition. Importances add up to 1 within a condition and compare only there:
    rows come grouped by condition (the largest first), sorted by mean within it, with the
    `rank` there, its `rank_low`/`rank_high` interval over the resamples, `outranks_next` (the
    share of resamples in which it is above the next row down) and `unstable` where that share,
    its own or the row above's, is below `level`; `resamples` and `failed` count the
    replicates.

    `trials` are completed ones (or copies carrying a value at a common rung). Parameters
    whose largest condition has fewer than `min_trials` trials are left out (see `unscored`).
    """
    # the conditions to score: each parameter's largest one (largest first)
    jobs = {s.params: s for s in scopes(trials).values() if len(s.trials) >= min_trials}
    if not jobs:
        raise ValueError(
            f"no condition (trials with the same parameters) has the {min_trials} trials "
            "importance needs and a parameter that varies in it"
        )
    blocks = []
    for k, scope in enumerate(jobs.values()):
        table, failed = _resampled(scope, direction, evaluator, n_resamples, seed=seed + 1000 * k)
        if table is not None:
            blocks.append(_ranked(table, scope, level, failed=failed))
    if not blocks:
        raise ValueError(f"{evaluator} failed on every resample of every condition")
    return pd.concat(blocks)


def _ranked(table: pd.DataFrame, scope: Condition, level: float, *, failed: int) -> pd.DataFrame:
    """One scope's rows from its replicates (one row each, one column per parameter)."""
    alpha = (1 - level) / 2
    ranks = table.rank(axis=1, ascending=False, method="average")  # 1: the most important
    out = pd.DataFrame(
        {
            "importance": table.mean(),
            "low": table.quantile(alpha),
            "high": table.quantile(1 - alpha),
            "rank_low": ranks.quantile(alpha).round().astype(int),
            "rank_high": ranks.quantile(1 - alpha).round().astype(int),
        }
    ).sort_values("importance", ascending=False)
    out["rank"] = range(1, len(out) + 1)
    names = list(out.index)
    above = [float((table[a] > table[b]).mean()) for a, b in itertools.pairwise(names)]
    out["outranks_next"] = [*above, np.nan]
    out["unstable"] = _unsettled(np.array(above), level)
    out["resamples"] = len(table) + failed
    out["failed"] = failed
    out["scope"] = scope.label
    out["n_trials"] = len(scope.trials)
    out.index.name = "param"
    return out


def _resampled(
    scope: Condition, direction, evaluator: str, n_resamples: int, *, seed: int
) -> tuple[pd.DataFrame | None, int]:
    """One row of importances per replicate: the condition's trials as they are, then
    bootstrap resamples of them. Every replicate scores the same parameters. Also the number
    of replicates the evaluator failed on (a resample in which a parameter took one value)."""
    rng = np.random.default_rng(seed)
    trials, params = list(scope.trials), scope.varied()
    samples, failed = [], 0
    for i in range(n_resamples):
        picked = (
            trials if i == 0 else [trials[j] for j in rng.integers(0, len(trials), len(trials))]
        )
        study = optuna.create_study(direction=direction)
        study.add_trials(picked)
        try:
            samples.append(
                optuna.importance.get_param_importances(
                    study, evaluator=make_evaluator(evaluator, seed + i), params=params
                )
            )
        except (RuntimeError, ValueError):  # a resample with a single distinct value, say
            failed += 1
    return (pd.DataFrame(samples) if samples else None), failed


def _unsettled(outranks_next: np.ndarray, level: float) -> np.ndarray:
    """Rows (sorted by importance) whose order against a neighbour the resamples do not
    settle: fewer than `level` of them put the row above the next one down."""
    unstable = np.zeros(len(outranks_next) + 1, dtype=bool)
    for i, share in enumerate(outranks_next):
        if share < level:
            unstable[i] = unstable[i + 1] = True
    return unstable


def condition_summary(trials: Sequence[FrozenTrial], *, minimize: bool) -> pd.DataFrame:
    """Per condition: its trials, best and median value. This is where a switch such as the
    optimizer family shows, since importance is scored inside conditions."""
    rows = [
        {
            "condition": c.label,
            "trials": len(c.trials),
            "best": (min if minimize else max)(t.value for t in c.trials),
            "median": float(np.median([t.value for t in c.trials])),
        }
        for c in conditions(trials)
    ]
    return pd.DataFrame(rows, columns=["condition", "trials", "best", "median"])


def _switches(trials: Sequence[FrozenTrial]) -> set[str]:
    """Categorical parameters whose value decides which other parameters a trial has."""
    seen: dict[str, dict[object, set[str]]] = defaultdict(lambda: defaultdict(set))
    for t in trials:
        for name, value in t.params.items():
            if isinstance(t.distributions[name], CategoricalDistribution):
                seen[name][value] |= set(t.params)
    return {
        name for name, by_value in seen.items() if len(set(map(frozenset, by_value.values()))) > 1
    }


def _label(
    names: frozenset[str],
    members: list[FrozenTrial],
    trials: Sequence[FrozenTrial],
    switches: set[str],
) -> str:
    """How a condition differs from the rest: the switch values that lead to it
    ("optim.name in {adam, adamw}"), else the parameters it has and lacks."""
    parts = []
    for name in sorted(names & switches):
        here = {t.params[name] for t in members}
        if here != {t.params[name] for t in trials if name in t.params}:
            choices = [c for c in members[0].distributions[name].choices if c in here]
            parts.append(
                f"{name} = {choices[0]}"
                if len(choices) == 1
                else f"{name} in {{{', '.join(map(str, choices))}}}"
            )
    if parts:
        return ", ".join(parts)
    everywhere = set.intersection(*(set(t.params) for t in trials))
    somewhere = set().union(*(t.params for t in trials))
    has, lacks = sorted(names - everywhere), sorted(somewhere - names)
    return "; ".join(
        [f"with {', '.join(has)}"] * bool(has) + [f"without {', '.join(lacks)}"] * bool(lacks)
    )
