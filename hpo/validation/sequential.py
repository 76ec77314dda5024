"""Sequential validation: add seeds in rounds and stop once the paired test has decided.

hpo.validate looks at the paired differences after each round of seeds (the looks: 6, 8, 10, ...
up to --seeds) and stops when the difference is beyond seed-to-seed noise. Looking several times
and stopping at the first significant look would raise the false-positive rate above 5% if each
look used the plain 0.05 level, so each look gets a stricter boundary, from an alpha-spending
plan: by look k at most SPENT(k) of the 5% has been used, and all of it by the last look.

The test is the exact sign-flip permutation test of hpo.validation.stats, made group-sequential
without an
approximation. Under the null hypothesis (differences symmetric about 0) the signs of the
differences are fair coin flips given their sizes, so for the sizes seen so far every sign pattern
is equally likely; enumerating them gives, exactly, the chance that an earlier look would have
stopped, and the boundary of this look is the largest p-value that keeps the total within the
spending plan. The false-positive rate is at most 5% for any symmetric distribution of the
differences, whatever the number of looks. Beyond 13 seeds (2^13 patterns) the patterns are
sampled: one seeded sample of the whole plan's patterns, whose first k signs serve look k, so
every look's boundary and p are the same numbers at every later look, in the stop, the verdict
and the report.

The plan (the most seeds, and so the looks and their boundaries) is fixed by a comparison's first
run and stored with the study (settle_plan): a rerun with another --seeds goes on under it.
Otherwise a verdict could be re-rolled without training anything: 10 stored differences with
p = 0.0254 are "not distinguishable" under the 10-seed plan (boundary 0.0215) but "better" under
a 20-seed plan (boundary 0.0293 at its look at 10).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

from hpo.validation.stats import ALPHA, MIN_PAIRS, N_RESAMPLES

LOOK_EVERY = 4  # seeds added per round after the first look (fewer looks: less alpha lost)
# float tolerance when a sign pattern's statistic equals the observed one
_REL_TOL = 1e-9


def looks(max_seeds: int) -> list[int]:
    """The numbers of seeds at which the test looks: MIN_PAIRS (the fewest pairs that can reach
    p < 0.05), then every LOOK_EVERY seeds, and always max_seeds itself."""
    if max_seeds <= MIN_PAIRS:
        return [max_seeds]
    return [*range(MIN_PAIRS, max_seeds, LOOK_EVERY), max_seeds]


def spent(n: int, max_seeds: int) -> float:
    """How much of ALPHA the looks up to n seeds may use together: Lan and DeMets' Pocock-type
    spending function alpha * ln(1 + (e - 1) t) at t = n / max_seeds, which spends early, so
    that a clear difference can stop at the first look (0.035 of 0.05 at 6 of 10 seeds, where
    the smallest p 6 pairs can give is 0.031), and all of it at max_seeds."""
    return ALPHA * float(np.log1p((np.e - 1) * min(1.0, n / max_seeds)))


@dataclass(frozen=True)
class Look:
    n: int  # pairs seen
    p_value: float  # the exact permutation p of these n pairs, as at a fixed n
    boundary: float  # stop when p_value <= boundary
    stop: bool  # the difference is beyond noise: no more seeds are needed
    final: bool  # the last look (n == max_seeds): the decision is made either way

    @property
    def decided(self) -> bool:
        return self.stop or self.final


def look(diffs: Sequence[float], max_seeds: int, *, seed: int = 0) -> Look:
    """The test at the current look: `diffs` are the candidate-minus-baseline differences of the
    seeds run so far, whose number must be one of looks(max_seeds)."""
    d = np.abs(np.asarray(diffs, dtype=float))
    n = len(d)
    plan = [k for k in looks(max_seeds) if k <= n]
    if not plan or plan[-1] != n:
        raise ValueError(f"{n} seeds is not a look of the plan {looks(max_seeds)}")
    signs = _sign_patterns(max_seeds, seed=seed)  # the whole plan's: the same at every look
    observed = np.sign(np.asarray(diffs, dtype=float))
    observed[observed == 0] = 1.0
    stopped = np.zeros(len(signs), dtype=bool)  # the patterns an earlier look stopped
    for k in plan:
        p = _p_values(signs[:, :k] * d[:k])
        budget = spent(k, max_seeds) - stopped.mean()
        boundary = _boundary(p[~stopped], budget, total=len(signs))
        if k == n:
            sampled = 2**max_seeds > N_RESAMPLES
            p_obs = _p_of(observed[:k] * d[:k], signs[:, :k] * d[:k], sampled=sampled)
            return Look(n, p_obs, boundary, p_obs <= boundary, n == max_seeds)
        stopped |= p <= boundary
    raise AssertionError("unreachable: the plan ends at n")


@functools.lru_cache(maxsize=8)  # a validation looks several times with the same plan
def _sign_patterns(n: int, *, seed: int) -> np.ndarray:
    """Every pattern of n signs (or N_RESAMPLES random ones beyond 2^n > N_RESAMPLES). The
    first k signs of all 2^n patterns are every k-pattern 2^(n-k) times: the p of a look at k
    seeds is the exact one, as if only k were enumerated."""
    if 2**n <= N_RESAMPLES:
        patterns = np.array(list(product((1.0, -1.0), repeat=n)))
    else:
        patterns = np.random.default_rng(seed).choice((1.0, -1.0), size=(N_RESAMPLES, n))
    patterns.flags.writeable = False  # shared by every caller
    return patterns


def _stat(signed: np.ndarray) -> np.ndarray:
    return np.abs(signed.sum(axis=-1))  # two-sided: |mean difference| up to the factor 1/n


def _p_values(signed: np.ndarray) -> np.ndarray:
    """Each pattern's permutation p among the patterns' first k signs: the share of patterns
    whose statistic is at least as extreme."""
    s = _stat(signed)
    order = np.sort(s)
    at_least = len(s) - np.searchsorted(order, s * (1 - _REL_TOL), side="left")
    return at_least / len(s)


def _p_of(observed: np.ndarray, patterns: np.ndarray, *, sampled: bool) -> float:
    s = _stat(patterns)
    at_least = np.count_nonzero(s >= _stat(observed) * (1 - _REL_TOL))
    if sampled:  # count the observed pattern too, as scipy does: never p = 0
        return float((at_least + 1) / (len(s) + 1))
    return float(at_least / len(s))


def _boundary(p: np.ndarray, budget: float, *, total: int) -> float:
    """The largest p-value c such that the patterns not stopped before with p <= c make up at
    most `budget` of all patterns (0 when even the smallest would exceed it)."""
    candidates = np.unique(p)  # sorted
    within = np.searchsorted(np.sort(p), candidates, side="right") / total <= budget + 1e-12
    # the shares grow with c: the candidates within budget are a prefix
    return float(candidates[within][-1]) if within.any() else 0.0


@dataclass(frozen=True)
class Plan:
    """A comparison's validation plan, fixed by its first run: the most seeds, and whether it
    looks before the last (sequential) or runs them all (--fixed-seeds, or several configs)."""

    max_seeds: int
    sequential: bool

    def to_json(self) -> dict:
        return {"max_seeds": self.max_seeds, "sequential": self.sequential}


def settle_plan(stored: dict | None, *, seeds: int, sequential: bool) -> tuple[Plan, str | None]:
    """The plan a run follows: the stored one if the comparison has one (and a note when the
    run asked for another), else the one asked for. A new plan on results already seen is a
    new analysis, whose 5% would come on top of the first one's; asking for more seeds when
    the first verdict disappoints is exactly the re-roll this rule stops."""
    asked = Plan(seeds, sequential)
    if stored is None:
        return asked, None
    plan = Plan(int(stored["max_seeds"]), bool(stored["sequential"]))
    if plan == asked:
        return plan, None
    how = "sequential looks" if plan.sequential else "all seeds, one look"
    return plan, (
        f"note: this comparison was planned at its first run with up to {plan.max_seeds} seeds "
        f"({how}); it goes on under that plan, not --seeds {seeds}: another plan on the same "
        "results could change the verdict without any new evidence"
    )
