"""The validation statistics are right: coverage, paired tests, effect size, FDR."""

import numpy as np
import pytest

from hpo.stats import adjust_pvalues, compare_paired, summarize, verdict


def test_interval_covers_the_true_mean_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    true_diff, covered, repeats = -0.05, 0, 200
    for i in range(repeats):
        seed_effect = rng.normal(2.0, 0.2, size=10)  # shared by both configs: what pairing removes
        baseline = seed_effect + rng.normal(0, 0.03, size=10)
        candidate = seed_effect + true_diff + rng.normal(0, 0.03, size=10)
        c = compare_paired(candidate, baseline, seed=i)
        covered += c["ci_low"] <= true_diff <= c["ci_high"]
    assert 0.88 <= covered / repeats <= 0.99


def test_identical_results_give_an_interval_containing_zero():
    x = [2.1, 2.0, 2.3, 1.9]
    c = compare_paired(x, x)
    assert c["ci_low"] <= 0 <= c["ci_high"] and c["p_value"] == 1.0 and c["cohens_d"] == 0.0
    assert "not distinguishable" in verdict(c)


def test_a_clear_improvement_excludes_zero_with_a_large_effect():
    base = np.array([2.0, 2.1, 1.9, 2.05, 2.2, 1.95, 2.1, 2.0, 1.98, 2.03])
    c = compare_paired(base - 0.3 + 0.01 * np.sin(np.arange(10)), base)
    assert c["ci_high"] < 0 and c["cohens_d"] < -5 and c["p_value"] < 0.01
    assert verdict(c).startswith("better than the baseline")
    assert verdict(c, minimize=False).startswith("worse")


def test_summary_and_bh_adjustment():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["mean"] == 3.0 and s["std"] == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1))
    assert s["ci_low"] < 3.0 < s["ci_high"]
    assert adjust_pvalues([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.04, 0.04])
    with pytest.raises(ValueError, match="equal lengths"):
        compare_paired([1, 2], [1, 2, 3])
