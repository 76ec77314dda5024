"""Range advice that the search space accepts, and trials compared at a common rung."""

import copy

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

import search_spaces
from hpo import space
from hpo.analysis import diagnostics
from hpo.analysis.importance import importance_intervals
from hpo.study_spec import load_study_spec, study_names

optuna.logging.set_verbosity(optuna.logging.WARNING)


def dry_trials(spaces, n=40, seed=0):
    """What the study's spaces sample: (params, distributions) of `n` random trials."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        space.suggest(trial, spaces)
        frozen = study.tell(trial, 0.0)
        out.append((frozen.params, frozen.distributions))
    return out


def plant_at_edge(dry, name, side):
    """The six best trials have `name` at the `side` end of its range, the rest mid-range."""
    trials, n_edge = [], 0
    for i, (params, distributions) in enumerate(dry):
        params = dict(params)
        value = 2.0 + i
        if name in params:
            dist = distributions[name]
            if n_edge < 6:
                params[name], value, n_edge = getattr(dist, side), 0.1 * n_edge, n_edge + 1
            else:
                mid = (dist.low + dist.high) / 2
                params[name] = round(mid) if isinstance(dist, IntDistribution) else mid
        trials.append(create_trial(value=value, params=params, distributions=distributions))
    return trials


def numeric_params(dry):
    names = {
        name
        for _, distributions in dry
        for name, dist in distributions.items()
        if isinstance(dist, FloatDistribution | IntDistribution)
    }
    return sorted(names)


def accepted(spec, spaces):
    """Sample the spaces with these bounds; every config must be one the trainer takes."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(12):
        trial = study.ask()
        spec.config_with(space.suggest(trial, spaces))
        study.tell(trial, 0.0)


@pytest.mark.parametrize("study", study_names())
def test_every_suggested_bound_is_accepted_by_the_space_it_names(study):
    spec = load_study_spec(study)
    dry = dry_trials(spec.search_space)
    checked = 0
    for name in numeric_params(dry):
        if name not in search_spaces.BOUNDS:  # only a study's own space declares no domains
            assert any(space.is_own(s) for s in spec.search_space), name
            continue
        bound = search_spaces.BOUNDS[name]  # every numeric parameter of ours is declared
        for side in ("low", "high"):
            warnings = diagnostics.range_warnings(plant_at_edge(dry, name, side), minimize=True)
            [w] = [w for w in warnings if w.param == name and w.side == side]
            assert bound.key in w.message and w.bound is bound
            i = 0 if side == "low" else 1
            if w.suggested is None:
                assert "the optimum may sit at the hard bound" in w.message
                assert w.current[i] == (bound.low if side == "low" else bound.high)
                continue
            assert w.suggested[1 - i] == w.current[1 - i]
            assert (
                (w.suggested[i] < w.current[i])
                if side == "low"
                else (w.suggested[i] > w.current[i])
            )
            spaces = copy.deepcopy(spec.search_space)
            spaces[bound.space] = {**(spaces.get(bound.space) or {}), bound.name: w.suggested}
            accepted(spec, spaces)
            # the number in the message is the one checked, as the user would type it
            assert "[" + ", ".join(f"{v:.4g}" for v in w.suggested) + "]" in w.message
            checked += 1
    assert checked > 0


def test_advice_for_the_cases_in_the_issue():
    spec = load_study_spec("lr_sweep")
    dry = dry_trials(spec.search_space)
    [beta] = [
        w
        for w in diagnostics.range_warnings(
            plant_at_edge(dry, "optim.one_minus_beta1", "high"), minimize=True
        )
        if w.param == "optim.one_minus_beta1"
    ]
    # the old advice was 1.64, a negative beta1; half-way to 1 on the log scale instead
    assert beta.suggested == (0.01, 0.5)
    assert beta.message.endswith(
        "search_space.optimizer.one_minus_beta1 = [0.01, 0.3] (log scale); widen it to "
        "[0.01, 0.5] (it must lie in (0, 1))"
    )
    dry = dry_trials(load_study_spec("full_sweep").search_space)
    [dropout] = [
        w
        for w in diagnostics.range_warnings(
            plant_at_edge(dry, "model.dropout", "low"), minimize=True
        )
        if w.param == "model.dropout"
    ]
    assert dropout.suggested is None and dropout.message.endswith(
        "the optimum may sit at the hard bound: dropout cannot go below 0"
    )
    [batch] = [
        w
        for w in diagnostics.range_warnings(
            plant_at_edge(dry, "train.batch_size_log2", "high"), minimize=True
        )
        if w.param == "train.batch_size_log2"
    ]
    assert batch.message.startswith(
        "train.batch_size_log2: 4 of the 4 best trials sit at the high edge of "
        "search_space.batch_size.batch_size = [8, 64] (powers of two); widen it to [8, 256]"
    )


def pruned_study(seed=0):
    """Pruning filtered on x: x > 0.8 pruned at step 10, x > 0.15 at step 30, so the completed
    trials all have a small x, and among them y (which pruning ignored) looks like the driver."""
    rng = np.random.default_rng(seed)
    dist = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}
    study = optuna.create_study()
    for _ in range(80):
        x, y = rng.uniform(), rng.uniform()
        curve = {s: 4 * x + 2 * y + 10 / s + 0.02 * rng.normal() for s in (10, 20, 30, 60, 90)}
        last = 10 if x > 0.8 else 30 if x > 0.15 else 90
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE if last == 90 else TrialState.PRUNED,
                value=min(curve.values()) if last == 90 else None,
                params={"x": x, "y": y},
                distributions=dist,
                intermediate_values={s: v for s, v in curve.items() if s <= last},
            )
        )
    return study


def test_pruned_trials_are_compared_at_a_common_rung():
    study = pruned_study()
    trials = study.get_trials()
    at_rung = diagnostics.comparable_values(trials, minimize=True)
    final = diagnostics.comparable_values(trials, minimize=True, final_only=True)
    assert at_rung.step == 30 and at_rung.n_complete == final.n_complete
    assert len(at_rung.trials) == at_rung.n_complete + at_rung.n_pruned > 40
    assert "best value up to step 30" in at_rung.describe()
    assert final.step is None and final.describe().startswith("final values of the")
    minimize = StudyDirection.MINIMIZE
    rung_imp = importance_intervals(at_rung.trials, direction=minimize, n_resamples=10)
    final_imp = importance_intervals(final.trials, direction=minimize, n_resamples=10)
    assert rung_imp.index[0] == "x" and rung_imp.loc["x", "low"] > rung_imp.loc["y", "high"]
    assert final_imp.index[0] == "y"  # the survivors' view: x's effect was pruned away


def test_without_pruning_the_final_values_are_compared():
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=10)
    values = diagnostics.comparable_values(study.trials, minimize=True)
    assert values.step is None and len(values.trials) == 10
