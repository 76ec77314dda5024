"""Statistics for many-seed validation, all from scipy.

- Interval of a mean: the Student t-interval. hpo.validate runs 3 to 10 seeds, where the BCa
  bootstrap this module used before is far too narrow (on normal data its 95% interval covers
  77% at n=4 and 91% at n=10). The t-interval is exact on normal data at every n and covers
  about 96% on symmetric heavy tails (t with 3 df). On skewed data it undercovers: 94% at
  skewness 1 (log-normal sigma 0.3), 92% at skewness 1.75 (sigma 0.5), at n = 3, 5 and 10
  alike. Skew-corrected intervals win back little: Johnson's t nothing, Hall's transformation
  1 to 3.5 points on log-normal data while losing as much on heavy symmetric tails (93% at
  n=10 for t with 3 df). So the plain t-interval stays; tests/hpo/test_stats.py measures it.
- Paired test: the exact two-sided sign-flip permutation test of the differences (every one of
  the 2^n sign patterns while 2^n <= N_RESAMPLES). Its smallest possible p is 2 / 2^n, so fewer
  than MIN_PAIRS pairs can never reach p < 0.05, whatever the data.
- Effect size: d_z, the paired standardized mean difference (mean difference over the standard
  deviation of the differences); not Cohen's d of two independent groups.
- Interval of a median (the benchmarks' "compute to reach" fractions, where a study that never
  reaches the target counts as infinite): two order statistics, exact for any continuous shape,
  when the target is fixed. When the target is itself an estimate (plain Optuna's median final
  best), a seed-paired bootstrap of the whole statistic: both arms resampled by study seed.
- Benjamini-Hochberg adjustment when several configs are compared with one baseline.
- The verdict calls a difference "beyond seed-to-seed noise" only when the 95% interval excludes
  0 and the (adjusted) p is below 0.05 as well; in a sequential validation
  (hpo.validation.sequential), when
  p is at most the boundary of the look where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.05  # not 1 - 0.95, which is 0.05000000000000004 and would let p = 0.05 pass
CONFIDENCE = 1 - ALPHA
N_RESAMPLES = 9999  # exact permutation test up to 13 pairs (2^13 = 8192 sign patterns)
MIN_PAIRS = 6  # 2 / 2^6 = 0.031 < ALPHA, while 5 pairs give at best 2 / 2^5 = 0.0625
ADVISED_PAIRS = 10


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation and the 95% t-interval of the mean of at least 2 values."""
    x = np.asarray(values, dtype=float)
    low, high = mean_interval(x)
    return {
        "n": len(x),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)),
        "ci_low": float(low),
        "ci_high": float(high),
    }


def mean_interval(x: Any) -> tuple[Any, Any]:
    """95% Student t-interval of the mean of the values along the last axis: two floats for a
    1-D sample, two arrays for a 2-D batch (one interval per row, which the tests' coverage
    simulation relies on). Constant data has the degenerate interval [x, x]."""
    x = np.asarray(x, dtype=float)
    n = x.shape[-1]
    if n < 2:
        raise ValueError(f"an interval of a mean needs at least 2 values, but got {n=}")
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, df=n - 1) * stats.sem(x, axis=-1)
    mean = x.mean(axis=-1)
    return mean - half, mean + half


def median_interval(values: Sequence[float]) -> tuple[float, float]:
    """Distribution-free 95% interval of the median: two order statistics, from the binomial
    distribution of how many values fall below it (scipy's quantile test). It needs no shape and
    takes infinite values (a study that never reached a target): at n = 10 it is the 2nd and 9th
    smallest values, which cover at least 97.9%; below 6 values no pair covers 95%, and it
    returns (-inf, inf)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 1:
        raise ValueError("an interval of a median needs at least 1 value")
    result = stats.quantile_test(x, q=float(np.median(x)), p=0.5)
    interval = result.confidence_interval(confidence_level=CONFIDENCE)
    # scipy says nan where no order statistic is far enough out: the interval is unbounded
    low, high = float(interval.low), float(interval.high)
    return (-math.inf if math.isnan(low) else low), (math.inf if math.isnan(high) else high)


def paired_bootstrap_interval(
    statistic: Callable[[list[np.ndarray]], np.ndarray],
    sizes: Sequence[int],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of a statistic of paired units (study seeds, each with
    every arm's result), grouped in strata (benchmark runs, each pooled seed measured against
    its own run's target). Each stratum's units are drawn with replacement, one draw per unit
    for all arms, so the pairing and the noise of every arm carry into the interval.
    `statistic` gets one (n_resamples, size) array of unit indices per stratum and returns
    n_resamples values. Percentile, not scipy's BCa: the statistic may be infinite (a target
    never reached), and scipy's bootstrap has no strata. The ends are order statistics taken
    outwards, so no interpolation meets an infinity."""
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, size, size=(n_resamples, size)) for size in sizes]
    values = np.asarray(statistic(draws), dtype=float)
    low = np.quantile(values, ALPHA / 2, method="lower")
    high = np.quantile(values, 1 - ALPHA / 2, method="higher")
    return float(low), float(high)


def smallest_p(n: int) -> float:
    """The smallest two-sided p the exact sign-flip test can give with n pairs: all differences
    of one sign is the most extreme of 2^n sign patterns, and so is its mirror image."""
    return min(1.0, 2.0 / 2**n)


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(x - y, axis=axis)  # vectorized: scipy evaluates all sign patterns at once


def compare_paired(
    candidate: Sequence[float], baseline: Sequence[float], *, seed: int = 0
) -> dict[str, Any]:
    """Candidate minus baseline, seed by seed: the number of pairs n, the mean difference with
    its 95% t-interval, the exact paired permutation p-value (sign flips of the differences;
    random flips, seeded, beyond 13 pairs) and the paired effect size d_z (mean difference over
    the standard deviation of the differences), also under its old key "cohens_d". d_z is None
    when the differences are constant and nonzero (no spread to scale by), so the result is
    valid JSON."""
    c, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    if c.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, but got {len(c)} and {len(b)}")
    diff = c - b
    low, high = mean_interval(diff)
    if not diff.any():  # identical results: nothing to test, and no effect
        p_value, d_z = 1.0, 0.0
    else:
        test = stats.permutation_test(
            (c, b),
            _mean_diff,
            permutation_type="samples",
            vectorized=True,
            n_resamples=N_RESAMPLES,
            rng=np.random.default_rng(seed),
        )
        p_value = float(test.pvalue)
        scale = max(np.abs(c).max(), np.abs(b).max())
        d_z = None if _constant(diff, scale=scale) else float(diff.mean() / diff.std(ddof=1))
    return {
        "n": len(diff),
        "mean_diff": float(diff.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": p_value,
        "d_z": d_z,
        "cohens_d": d_z,  # the old name, kept for readers of earlier reports
    }


def _constant(diff: np.ndarray, *, scale: float) -> bool:
    """Equal up to float rounding: c - b carries an error of about eps * |c|, and "constant"
    differences of 0.1 would otherwise give a d_z of 10^14."""
    return np.ptp(diff) <= 16 * np.finfo(float).eps * scale


def adjust_pvalues(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg false discovery rate adjustment, for several comparisons at once."""
    if len(p_values) == 0:
        return []
    return [
        float(p)
        for p in stats.false_discovery_control(np.asarray(p_values, dtype=float), method="bh")
    ]


def verdict(comparison: dict[str, Any], *, minimize: bool = True) -> str:
    """A plain sentence: is the difference larger than seed-to-seed noise? It starts with one of
    "better than the baseline", "worse than the baseline" or "not distinguishable from the
    baseline", and says "beyond seed-to-seed noise" only when the 95% interval excludes 0 and
    the p-value (BH-adjusted where the comparison has "p_adjusted") is below 0.05."""
    low, high = comparison["ci_low"], comparison["ci_high"]
    p = comparison.get("p_adjusted", comparison["p_value"])
    p_name = "adjusted permutation p" if "p_adjusted" in comparison else "permutation p"
    excludes_zero = high < 0 or low > 0
    # a sequential validation (hpo.validation.sequential) compares p with its look's boundary
    # instead
    sequential = comparison.get("sequential")
    beyond = p <= sequential["boundary"] if sequential else p < ALPHA
    level = f"<= {sequential['boundary']:.3g}, the boundary of this look" if sequential else None
    if excludes_zero and beyond:
        direction = "better" if (high < 0) == minimize else "worse"
        return (
            f"{direction} than the baseline beyond seed-to-seed noise "
            f"(the 95% t-interval excludes 0 and the {p_name} = {p:.3g} "
            f"{level or f'< {ALPHA:.2g}'})"
        )
    n = comparison.get("n")
    if sequential and beyond:
        reason = f"the {p_name} = {p:.3g} {level} but the 95% t-interval contains 0"
    elif sequential:
        reason = (
            f"the {p_name} = {p:.3g} is above the last look's boundary {sequential['boundary']:.3g}"
        )
    elif n is not None and smallest_p(n) >= ALPHA:
        reason = (
            f"{n} paired seeds are too few to separate a difference from seed-to-seed noise "
            f"(the smallest p {n} paired seeds can give is {smallest_p(n):.3g}; "
            f"use {MIN_PAIRS} or more, {ADVISED_PAIRS} advised)"
        )
    elif excludes_zero:
        reason = (
            f"the 95% t-interval excludes 0 but the {p_name} = {p:.3g} is not below {ALPHA:.2g}"
        )
    elif p < ALPHA:
        reason = f"the {p_name} = {p:.3g} is below {ALPHA:.2g} but the 95% t-interval contains 0"
    else:
        reason = f"the 95% t-interval of the difference contains 0 ({p_name} = {p:.3g})"
    return f"not distinguishable from the baseline: {reason}; {_lean(comparison, minimize)}"


def _lean(comparison: dict[str, Any], minimize: bool) -> str:
    """Which way the data point, for a difference too small to call."""
    diff = comparison["mean_diff"]
    if diff == 0:
        return "the data lean neither way (mean difference 0)"
    direction = "better" if (diff < 0) == minimize else "worse"
    return f"the data lean {direction} (mean difference {diff:+.4g})"
