"""Importance with conditional parameters: each parameter is scored within its condition."""

import math

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import create_trial

from hpo.analysis.importance import (
    Condition,
    _ranked,
    condition_summary,
    conditions,
    importance_intervals,
    unscored,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

DISTRIBUTIONS = {
    "optim.name": CategoricalDistribution(["adam", "sgd"]),
    "optim.lr": FloatDistribution(1e-4, 1e-2, log=True),
    "optim.one_minus_beta1": FloatDistribution(0.01, 0.3, log=True),
    "optim.one_minus_momentum": FloatDistribution(0.01, 0.5, log=True),
}


def log_uniform(rng, low, high):
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def planted(n_adam, n_sgd, seed=0):
    """Adam trials, then SGD ones. 1 - beta1 (Adam only) moves the objective by up to 3,
    the learning rate by up to 1, and SGD trials sit 1.5 higher with momentum as noise."""
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n_adam + n_sgd):
        adam = i < n_adam
        params = {"optim.name": "adam" if adam else "sgd", "optim.lr": log_uniform(rng, 1e-4, 1e-2)}
        value = ((math.log10(params["optim.lr"]) + 3) ** 2) + 0.05 * rng.normal()
        if adam:
            params["optim.one_minus_beta1"] = beta = log_uniform(rng, 0.01, 0.3)
            value += 3 * (math.log(beta / 0.01) / math.log(30)) ** 2
        else:
            params["optim.one_minus_momentum"] = log_uniform(rng, 0.01, 0.5)
            value += 1.5
        distributions = {k: DISTRIBUTIONS[k] for k in params}
        trials.append(create_trial(value=value, params=params, distributions=distributions))
    return trials


def test_a_conditional_driver_ranks_first_with_a_clear_interval():
    imp = importance_intervals(planted(34, 6), direction=StudyDirection.MINIMIZE, n_resamples=20)
    assert list(imp.index) == ["optim.one_minus_beta1", "optim.lr"]
    beta, lr = imp.loc["optim.one_minus_beta1"], imp.loc["optim.lr"]
    assert beta["low"] > lr["high"] and lr["low"] > 0
    assert not imp["unstable"].any()
    # both scored on the same 34 Adam trials, so the two numbers share one scale
    assert set(imp["scope"]) == {"optim.name = adam"} and set(imp["n_trials"]) == {34}


def test_the_issue_example_no_longer_gives_the_driver_a_zero_interval():
    # 19 Adam trials and 1 SGD: before, beta1 came out 0.255 [0.000, 0.877] against lr 0.685,
    # because resamples that drew the SGD trial could not score beta1 and counted it as 0
    imp = importance_intervals(planted(19, 1), direction=StudyDirection.MINIMIZE)
    assert imp.index[0] == "optim.one_minus_beta1"
    assert imp.loc["optim.one_minus_beta1", "low"] > imp.loc["optim.lr", "high"]
    assert imp.loc["optim.one_minus_beta1", "low"] > 0.5


def test_ped_anova_on_conditions_agrees():
    imp = importance_intervals(
        planted(34, 6), direction=StudyDirection.MINIMIZE, evaluator="ped-anova", n_resamples=5
    )
    assert imp.index[0] == "optim.one_minus_beta1"


def test_what_is_left_out_is_said_and_conditions_are_compared():
    trials = planted(34, 6)
    why = unscored(trials)
    assert why["optim.name"] == "constant within every condition (it chooses between them)"
    assert why["optim.one_minus_momentum"] == (
        "varies in at most 6 trials of one condition (optim.name = sgd); importance needs 8"
    )
    assert [(c.label, len(c.trials)) for c in conditions(trials)] == [
        ("optim.name = adam", 34),
        ("optim.name = sgd", 6),
    ]
    table = condition_summary(trials, minimize=True).set_index("condition")
    assert table.loc["optim.name = sgd", "trials"] == 6
    assert table.loc["optim.name = adam", "best"] == min(
        t.value for t in trials if t.params["optim.name"] == "adam"
    )


def test_a_condition_without_a_categorical_switch_is_named_by_its_parameters():
    x = FloatDistribution(0, 1)
    trials = [
        create_trial(
            value=i,
            params={"x": i / 20, **({"y": 0.5} if i % 2 else {})},
            distributions={"x": x, **({"y": x} if i % 2 else {})},
        )
        for i in range(20)
    ]
    assert sorted(c.label for c in conditions(trials)) == ["with y", "without y"]


def test_too_few_trials_in_every_condition_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no condition .* has the 8 trials importance needs"):
        importance_intervals(planted(5, 5), direction=StudyDirection.MINIMIZE, n_resamples=2)


def test_the_order_is_judged_on_the_resamples_not_on_overlapping_intervals():
    """Importances are shares: two can move together. Here a is above b in every resample
    although their intervals overlap, and b is above c in three quarters of them."""
    u = np.random.default_rng(0).uniform(-0.1, 0.1, 200)
    table = pd.DataFrame({"a": 0.6 + u, "b": 0.5 + u, "c": 0.4 - u})
    out = _ranked(table, Condition("all trials", ("a", "b", "c"), ()), 0.9, failed=0)
    assert list(out.index) == ["a", "b", "c"]
    assert out.loc["a", "low"] < out.loc["b", "high"]  # overlapping intervals
    assert out.loc["a", "outranks_next"] == 1.0 and not out.loc["a", "unstable"]
    assert out.loc["a", "rank_low"] == out.loc["a", "rank_high"] == 1
    assert 0.65 < out.loc["b", "outranks_next"] < 0.85
    assert out.loc["b", "unstable"] and out.loc["c", "unstable"]
    assert (out.loc["b", "rank_low"], out.loc["b", "rank_high"]) == (2, 3)


def test_resamples_the_evaluator_fails_on_are_counted_not_dropped_silently():
    # one trial apart from nine equal ones: a resample that misses it has nothing to explain,
    # and fANOVA refuses it; about (9/10)^10 = 35% of the resamples miss it
    x = FloatDistribution(0, 1)
    rng = np.random.default_rng(0)
    trials = [
        create_trial(
            value=1.0 if i == 0 else 0.0,
            params={"x": float(rng.uniform()), "y": float(rng.uniform())},
            distributions={"x": x, "y": x},
        )
        for i in range(10)
    ]
    imp = importance_intervals(trials, direction=StudyDirection.MINIMIZE, n_resamples=30)
    assert (imp["resamples"] == 30).all()
    assert 3 <= imp["failed"].iloc[0] <= 20
