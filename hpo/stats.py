"""Statistics for many-seed validation, all from scipy: bootstrap intervals (BCa), a paired
permutation test, paired effect size and Benjamini-Hochberg adjustment."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 9999


def summarize(values: Sequence[float], *, seed: int = 0) -> dict[str, float]:
    """Mean, standard deviation and a 95% BCa bootstrap interval of the mean."""
    x = np.asarray(values, dtype=float)
    low, high = mean_interval(x, seed=seed)
    return {
        "n": len(x),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
        "ci_low": low,
        "ci_high": high,
    }


def mean_interval(x: np.ndarray, *, seed: int = 0) -> tuple[float, float]:
    """95% BCa interval of the mean. Constant data has the degenerate interval [x, x]."""
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0])
    result = stats.bootstrap(
        (x,),
        np.mean,
        confidence_level=CONFIDENCE,
        method="BCa",
        n_resamples=N_RESAMPLES,
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa can fail on tiny samples
        result = stats.bootstrap(
            (x,),
            np.mean,
            confidence_level=CONFIDENCE,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = result.confidence_interval
    return float(low), float(high)


def compare_paired(
    candidate: Sequence[float], baseline: Sequence[float], *, seed: int = 0
) -> dict[str, float]:
    """Candidate minus baseline, seed by seed: mean difference with its BCa interval, a paired
    permutation p-value (random sign flips of the differences), and Cohen's d for paired samples
    (mean difference over the standard deviation of the differences)."""
    c, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    if c.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, but got {len(c)} and {len(b)}")
    diff = c - b
    low, high = mean_interval(diff, seed=seed)
    if np.ptp(diff) == 0 and diff[0] == 0:
        p_value, d = 1.0, 0.0
    else:
        test = stats.permutation_test(
            (c, b),
            lambda x, y: np.mean(x - y),
            permutation_type="samples",
            n_resamples=N_RESAMPLES,
            rng=np.random.default_rng(seed),
        )
        p_value = float(test.pvalue)
        sd = diff.std(ddof=1)
        d = float(diff.mean() / sd) if sd > 0 else math.copysign(math.inf, diff.mean())
    return {
        "mean_diff": float(diff.mean()),
        "ci_low": low,
        "ci_high": high,
        "p_value": p_value,
        "cohens_d": d,
    }


def adjust_pvalues(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg false discovery rate adjustment, for several comparisons at once."""
    if len(p_values) == 0:
        return []
    return [
        float(p)
        for p in stats.false_discovery_control(np.asarray(p_values, dtype=float), method="bh")
    ]


def verdict(comparison: dict[str, float], *, minimize: bool = True) -> str:
    """A plain sentence: is the difference larger than seed-to-seed noise?"""
    low, high = comparison["ci_low"], comparison["ci_high"]
    better = high < 0 if minimize else low > 0
    worse = low > 0 if minimize else high < 0
    if better:
        return "better than the baseline beyond seed-to-seed noise (the 95% interval excludes 0)"
    if worse:
        return "worse than the baseline beyond seed-to-seed noise (the 95% interval excludes 0)"
    return "not distinguishable from the baseline: the 95% interval of the difference contains 0"
