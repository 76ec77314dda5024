"""hpo's search (sampler and pruner) on a synthetic objective with a known optimum: no training,
so these run in seconds. The objective's learning curves converge on a final value whose
optimum is 0 at x = 10**-2.5, y = 0.7, c = "b" (z does nothing)."""

from __future__ import annotations

import math
import statistics
import threading

import optuna
from optuna.trial import TrialState

from hpo.strategy import make_pruner, make_sampler
from hpo.study_spec import load_study_spec

MAX_STEP = 27  # Hyperband with η = 3 from 1 step: 4 brackets
SPEC = load_study_spec("smoke")


def final_value(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 1e-5, 1e-1, log=True)
    y = trial.suggest_float("y", 0.0, 1.0)
    c = trial.suggest_categorical("c", ["a", "b", "c"])
    trial.suggest_float("z", 0.0, 1.0)
    return (math.log10(x) + 2.5) ** 2 + 2 * (y - 0.7) ** 2 + {"a": 0.3, "b": 0.0, "c": 0.6}[c]


def curve(trial: optuna.Trial) -> float:
    """Falls towards the final value as 1/step, as a loss curve does; reported at every step."""
    final = final_value(trial)
    for step in range(1, MAX_STEP + 1):
        value = final + (1 + final) * 2 / step
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def hyperband() -> optuna.pruners.HyperbandPruner:
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=MAX_STEP)


def hpo_tpe(seed: int, n_existing: int = 0, worker: int = 0) -> optuna.samplers.BaseSampler:
    return make_sampler(SPEC, name="tpe", seed=seed, worker=worker, n_existing=n_existing)


def params_of(study: optuna.Study) -> list[dict]:
    return [t.params for t in study.trials]


def test_a_resumed_study_proposes_what_an_uninterrupted_one_would(tmp_path):
    url = f"sqlite:///{tmp_path}/hpo.db"
    whole = optuna.create_study(study_name="s", sampler=hpo_tpe(3), pruner=hyperband())
    whole.optimize(curve, n_trials=30)

    # stopped after 12 trials, resumed by a new process: a new sampler, told what is there
    part = optuna.create_study(study_name="s", storage=url, sampler=hpo_tpe(3), pruner=hyperband())
    part.optimize(curve, n_trials=12)
    resumed = optuna.load_study(
        study_name="s", storage=url, sampler=hpo_tpe(3, n_existing=12), pruner=hyperband()
    )
    resumed.optimize(curve, n_trials=18)

    assert params_of(resumed) == params_of(whole)
    assert sum(t.state == TrialState.PRUNED for t in whole.trials) > 0  # Hyperband took part

    # the control: one random stream per run, seeded as a resumed run seeds it, proposes others
    def streamed(n_existing: int) -> optuna.samplers.TPESampler:
        return optuna.samplers.TPESampler(seed=3 + n_existing, n_startup_trials=4)

    other = optuna.create_study(study_name="s", sampler=streamed(0), pruner=hyperband())
    other.optimize(curve, n_trials=12)
    other.sampler = streamed(12)
    other.optimize(curve, n_trials=18)
    straight = optuna.create_study(study_name="s", sampler=streamed(0), pruner=hyperband())
    straight.optimize(curve, n_trials=30)
    assert params_of(other)[12:] != params_of(straight)[12:]


def test_two_workers_with_the_same_seed_share_a_study_without_repeating_points(tmp_path):
    url = f"sqlite:///{tmp_path}/hpo.db"
    optuna.create_study(study_name="s", storage=url)
    done = []

    def worker(index: int) -> None:
        # each worker its own process in real use: its own study object and sampler, one seed
        study = optuna.load_study(
            study_name="s", storage=url, sampler=hpo_tpe(5, worker=index), pruner=hyperband()
        )
        study.optimize(curve, n_trials=20)
        done.append(index)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(done) == [0, 1]

    trials = optuna.load_study(study_name="s", storage=url).trials
    assert len(trials) == 40
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 40
    complete = [t.value for t in trials if t.state == TrialState.COMPLETE]
    # near the optimum: random search's median best over 40 trials here is about 0.2
    assert min(complete) < 0.15


def test_under_optunas_hyperband_tpe_learns_from_every_bracket():
    """Optuna's docs say a sampler under HyperbandPruner sees only its bracket's trials; in
    Optuna 5 TPE reads the whole study (the bracket view filters `get_trials`, TPE calls
    `_get_trials`). hpo's design rests on that: one model for all brackets (BOHB's choice), and
    the random start-up paid once. If Optuna starts filtering, this fails and the start-up
    settings need another look."""
    pruner = hyperband()
    # a fixed name: Hyperband puts a trial in a bracket by a hash of the study's name (a random
    # one left a bracket empty in 2 of 30 tries)
    history = optuna.create_study(
        study_name="brackets", sampler=optuna.samplers.RandomSampler(0), pruner=pruner
    )
    history.optimize(curve, n_trials=40)
    # the brackets exist: Hyperband spread the history's trials over its 4
    assert {pruner._get_bracket_id(history, t) for t in history.trials} == {0, 1, 2, 3}

    def next_point(pruner: optuna.pruners.BasePruner) -> dict:
        study = optuna.create_study(
            study_name=history.study_name,  # the same brackets
            sampler=optuna.samplers.TPESampler(seed=1, n_startup_trials=10),
            pruner=pruner,
        )
        study.add_trials(history.trials)
        trial = study.ask()
        final_value(trial)
        return trial.params

    assert next_point(pruner) == next_point(optuna.pruners.NopPruner())


def compute_to_reach_the_optimum(study: optuna.Study, budget: int = 40 * MAX_STEP) -> float:
    """Steps trained until a trial completes within 0.1 of the optimum (inf: not in budget)."""
    spent = 0
    while spent < budget:
        study.optimize(curve, n_trials=1)
        trial = study.trials[-1]
        spent += max(trial.intermediate_values)
        if trial.state == TrialState.COMPLETE and trial.value <= 0.1 + 1.1 * 2 / MAX_STEP:
            return spent
    return math.inf


def test_hpos_default_search_finds_the_optimum_with_less_compute_than_plain_optunas():
    """lr_sweep's sampler and pruner against Optuna's TPESampler() + HyperbandPruner() at their
    defaults, on the same 10 seeds (measured: a median of 159 steps against 328, ahead on 8 of
    10). lr_sweep prunes with ASHA from its second evaluation; from the first the median was
    140 (ahead on 8), with its Hyperband 276 (ahead on 6)."""
    spec = load_study_spec("lr_sweep")
    config = spec.fixed_config({"train.max_steps": MAX_STEP, "train.eval_interval": 1})
    hpo, plain = [], []
    for seed in range(10):
        sampler = make_sampler(spec, name=spec.sampler.name, seed=seed, worker=0, n_existing=0)
        pruner = make_pruner(spec, name=spec.pruner.name, config=config)
        # one study name: Hyperband assigns brackets by hashing it, so the test is deterministic
        study = optuna.create_study(study_name="syn", sampler=sampler, pruner=pruner)
        hpo.append(compute_to_reach_the_optimum(study))
        plain_study = optuna.create_study(
            study_name="syn",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.HyperbandPruner(),
        )
        plain.append(compute_to_reach_the_optimum(plain_study))
    assert statistics.median(hpo) < 0.6 * statistics.median(plain), (hpo, plain)
    assert sum(h < p for h, p in zip(hpo, plain, strict=True)) >= 7, (hpo, plain)
