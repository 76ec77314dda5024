"""Property tests: samples stay in bounds, conditional parameters appear exactly when their
condition holds, batch sizes are powers of two, and a seed fixes the whole sequence."""

import inspect
import math
import re

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.distributions import FloatDistribution, IntDistribution

import search_spaces
from search_spaces import architecture, batch_size, optimizer, regularization, schedule
from trainers import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample(space, n=60, seed=0, sampler="random", **bounds):
    make = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler}[sampler]
    study = optuna.create_study(sampler=make(seed=seed))
    out = []
    for i in range(n):
        trial = study.ask()
        overrides = space(trial, **bounds)
        out.append((dict(trial.params), overrides))
        study.tell(trial, float(i % 7))
    return out


@settings(max_examples=25, deadline=None)
@given(
    low=st.floats(1e-6, 1e-2),
    span=st.floats(1.5, 1e4),
    names=st.lists(st.sampled_from(["adamw", "adam", "sgd"]), min_size=1, max_size=3, unique=True),
)
def test_optimizer_samples_stay_in_bounds_and_conditions_hold(low, span, names):
    sgd_range = (10 * low, 10 * low * span)
    for params, out in sample(
        optimizer.suggest, n=20, lr=(low, low * span), sgd_lr=sgd_range, names=names
    ):
        assert out["optim.name"] in names
        adam = out["optim.name"] in optimizer.ADAM_FAMILY
        # each family samples its learning rate from its own range, under its own name
        assert ("optim.lr" in params) == adam and ("optim.sgd_lr" in params) == (not adam)
        lr_range = (low, low * span) if adam else sgd_range
        assert lr_range[0] <= out["optim.lr"] <= lr_range[1]
        assert ("optim.one_minus_beta1" in params) == adam
        assert ("optim.beta1" in out) == adam and ("optim.beta2" in out) == adam
        assert ("optim.one_minus_momentum" in params) == (out["optim.name"] == "sgd")
        if adam:
            assert 0.7 <= out["optim.beta1"] <= 0.99 and 0.9 <= out["optim.beta2"] <= 0.999
        # decoupled decay for AdamW, an L2 penalty for Adam and SGD: two parameters, two ranges
        decay = "optim.weight_decay" if out["optim.name"] == "adamw" else "optim.l2"
        assert (decay in params) == params["optim.weight_decay_on"]
        assert {"optim.weight_decay", "optim.l2"} - {decay} & set(params) == set()
        if not params["optim.weight_decay_on"]:
            assert out["optim.weight_decay"] == 0.0
        else:
            assert out["optim.weight_decay"] == params[decay]
        assert ("optim.name" in params) == (len(names) > 1)


def test_betas_are_log_uniform_in_one_minus_beta():
    # 0.9, 0.99 and 0.999 must be about equally likely: 1-beta2 in [1e-3, 1e-1] splits evenly in log
    draws = [out["optim.beta2"] for _, out in sample(optimizer.suggest, n=400, names=["adam"])]
    below = sum(1 - b < 1e-2 for b in draws) / len(draws)
    assert 0.4 < below < 0.6


@settings(max_examples=20, deadline=None)
@given(low_exp=st.integers(0, 5), extra=st.integers(1, 5))
def test_batch_sizes_are_powers_of_two_within_bounds(low_exp, extra):
    low, high = 2**low_exp, 2 ** (low_exp + extra)
    for params, out in sample(batch_size.suggest, n=20, batch_size=(low, high)):
        b = out["train.batch_size"]
        assert low <= b <= high and b & (b - 1) == 0
        assert params["train.batch_size_log2"] == int(math.log2(b))


def test_schedule_floor_only_for_decaying_schedules():
    for params, out in sample(schedule.suggest, n=80):
        assert out["schedule.warmup_frac"] in (0.0, 0.02, 0.05, 0.1)
        assert ("schedule.min_lr_frac" in params) == (out["schedule.name"] != "constant")
        if "schedule.min_lr_frac" in params:
            assert 0.0 <= out["schedule.min_lr_frac"] <= 0.2


def test_regularization_and_disabled_bounds():
    for params, out in sample(regularization.suggest, n=30, label_smoothing=None):
        assert 0 <= out["model.dropout"] <= 0.3
        assert "train.label_smoothing" not in out and "train.label_smoothing" not in params


def test_architecture_width_always_divides_into_heads():
    for _, out in sample(
        architecture.suggest, n=80, n_layer=(1, 3), n_head=(1, 6), head_size=(8, 32)
    ):
        assert 1 <= out["model.n_layer"] <= 3 and 1 <= out["model.n_head"] <= 6
        head = out["model.n_embd"] // out["model.n_head"]
        assert out["model.n_embd"] % out["model.n_head"] == 0 and head in (8, 16, 32)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_same_seed_same_sequence(sampler):
    spaces = {"optimizer": {"names": ["adamw", "sgd"]}, "schedule": {}, "batch_size": {}}

    def run(seed):
        return sample(lambda t: search_spaces.suggest(t, spaces), n=25, seed=seed, sampler=sampler)

    assert run(3) == run(3)
    assert run(3) != run(4)


@pytest.mark.parametrize(
    ("space", "bounds", "message"),
    [
        (
            optimizer.suggest,
            {"lr": (1e-2, 1e-4)},
            "optimizer.lr: low must be below high, but got low=0.01, high=0.0001",
        ),
        (optimizer.suggest, {"lr": (1e-3, 1e-3)}, "low must be below high"),
        (
            optimizer.suggest,
            {"lr": (0.0, 1e-2)},
            "optimizer.lr: a log-scale range needs low > 0, but got low=0.0",
        ),
        (optimizer.suggest, {"names": ["adamw", "lion"]}, "unknown choice 'lion'"),
        (
            optimizer.suggest,
            {"one_minus_beta2": (0.01, 1.5)},
            "optimizer.one_minus_beta2: must lie in (0, 1), but got [0.01, 1.5]",
        ),
        (batch_size.suggest, {"batch_size": (8, 48)}, "bounds must be powers of two, but got 48"),
        (schedule.suggest, {"warmup_fracs": [0.0, 1.5]}, "each must be in [0, 1)"),
        (architecture.suggest, {"n_layer": (2.5, 4)}, "must be whole numbers"),
        (architecture.suggest, {"n_layer": (0, 4)}, "architecture.n_layer: must lie in [1, inf)"),
        (schedule.suggest, {"min_lr_frac": (0.0, 1.5)}, "must lie in [0, 1], but got [0.0, 1.5]"),
        (regularization.suggest, {"dropout": (0.0, 1.0)}, "must lie in [0, 1)"),
    ],
)
def test_impossible_bounds_are_refused(space, bounds, message):
    trial = optuna.create_study().ask()
    with pytest.raises(ValueError) as err:
        space(trial, **bounds)
    assert message in str(err.value)


def test_yaml_style_string_numbers_are_accepted():
    trial = optuna.create_study().ask()
    out = optimizer.suggest(trial, lr=("1e-4", "1e-2"))
    assert 1e-4 <= out["optim.lr"] <= 1e-2


@pytest.mark.parametrize("space", list(search_spaces.SPACES))
def test_every_numeric_parameter_declares_its_bound(space):
    """hpo.analysis.diagnostics reads search_spaces.BOUNDS to advise a range: each numeric parameter a
    space samples must be declared there, under its space and a bound its suggest() takes."""
    keywords = inspect.signature(search_spaces.SPACES[space]).parameters
    bounds = {"names": ["adamw", "adam", "sgd"]} if space == "optimizer" else {}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        search_spaces.SPACES[space](trial, **bounds)
        for name, dist in study.tell(trial, 0.0).distributions.items():
            if isinstance(dist, FloatDistribution | IntDistribution):
                bound = search_spaces.BOUNDS[name]
                assert bound.space == space and bound.name in keywords and bound.param == name
                seen.add(name)
    assert seen == {b.param for b in search_spaces.BOUNDS.values() if b.space == space}


EVERY_SPACE = {
    "optimizer": {"names": ["adamw", "adam", "sgd"]},
    "schedule": {},
    "batch_size": {},
    "regularization": {},
    "architecture": {},
}


def test_a_sampled_config_gives_back_its_parameters():
    """params_for inverts suggest: the config of any sampled trial, as a config's flat values,
    gives back that trial's parameters (so a known config, a study's baseline, can be enqueued
    as a trial that trains exactly it)."""
    base = TrainConfig()
    for params, overrides in sample(lambda t: search_spaces.suggest(t, EVERY_SPACE), n=60):
        values = base.with_overrides(overrides).flat()
        found = search_spaces.params_for(EVERY_SPACE, values)
        assert found.keys() == params.keys()
        for name, value in params.items():  # floats up to the rounding of 1 - (1 - beta)
            expected = pytest.approx(value, rel=1e-9) if isinstance(value, float) else value
            assert found[name] == expected, name


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"optim.lr": 0.5}, "optim.lr=0.5 lies outside its range [0.0001, 0.01]"),
        ({"optim.name": "sgd"}, "optim.name='sgd' is not one of its choices ['adamw', 'adam']"),
        ({"train.batch_size": 12}, "train.batch_size=12 is not a power of two"),
        (
            {"train.batch_size": 16, "model.n_embd": 96, "model.n_head": 4},
            "model.n_embd / model.n_head=24 is not a power of two",
        ),
    ],
)
def test_a_config_the_space_cannot_express_is_refused(sets, message):
    spaces = {"optimizer": {"names": ["adamw", "adam"]}, "batch_size": {}, "architecture": {}}
    with pytest.raises(ValueError, match=re.escape(message)):
        search_spaces.params_for(spaces, TrainConfig().with_overrides(sets).flat())
