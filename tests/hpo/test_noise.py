"""Seed noise (hpo.noise): the statistics on synthetic studies with a known seed variance, and
the re-evaluations of a real study, with several workers, its stop rule and what validate picks."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState
from scipy import stats

from hpo import noise
from hpo import record as records
from hpo.noise import Run, Spent, estimate, gains_below_noise, next_reevaluation
from hpo.progress import summary
from hpo.record import TrialRecord
from hpo.session import RunRequest, load_request, open_study, run_study
from hpo.storage import RetryCrashedTrial, Storage
from hpo.validation.validate import configs_to_validate
from tests.helpers import COUNTED, here, run, run_hpo, run_ray, sqlite_url, trials_at

FULL = 100  # tokens of one full run in the synthetic studies


def test_planted_seed_noise_is_recovered_within_its_sampling_error():
    """Pooled over the re-evaluations of 20 trials (2 each beside the trial's own run: 20
    degrees of freedom), the estimate's 95% chi-square interval covers the planted sd in about
    95% of 400 simulated studies."""
    rng = np.random.default_rng(0)
    sd, covered = 0.05, 0
    for _ in range(400):
        means = rng.uniform(2.0, 3.0, size=20)
        values = {
            n: {k: float(m + rng.normal(0, sd)) for k in range(3)} for n, m in enumerate(means)
        }
        got = estimate(values, minimize=True)
        assert got.dof == 20
        lo = got.sd * np.sqrt(got.dof / stats.chi2.ppf(0.975, got.dof))
        hi = got.sd * np.sqrt(got.dof / stats.chi2.ppf(0.025, got.dof))
        covered += lo <= sd <= hi
    assert 0.92 <= covered / 400 <= 0.98


def test_configs_closer_than_the_noise_are_tied_and_far_ones_are_not():
    rng = np.random.default_rng(1)
    sd = 0.05

    def draws(mean: float) -> dict[int, float]:
        return {k: float(mean + rng.normal(0, sd)) for k in range(4)}

    # trial 1 is 0.2 sd worse than trial 0, trial 2 eight sd worse; 30 other trials measure
    # the noise
    values = {0: draws(2.0), 1: draws(2.0 + 0.2 * sd), 2: draws(2.0 + 8 * sd)}
    values.update({n: draws(3.0) for n in range(3, 33)})
    got = estimate(values, minimize=True)
    assert got.sd == pytest.approx(sd, rel=0.25)
    assert set(got.tied()) == {0, 1}
    assert got.best in (0, 1)
    # maximizing: the same values, the other end
    assert estimate(values, minimize=False).best in range(3, 33)


def test_without_reevaluations_there_is_no_noise_and_the_best_stands_alone():
    got = estimate({0: {0: 2.0}, 1: {0: 2.001}}, minimize=True)
    assert got.sd is None
    assert got.tied() == [0]


def test_a_trial_with_one_lucky_seed_loses_to_a_measured_one_only_by_its_mean():
    values = {0: {0: 2.00, 1: 2.10, 2: 2.12}, 1: {0: 2.05}}
    got = estimate(values, minimize=True)
    assert got.mean(0) == pytest.approx(2.0733, abs=1e-4)
    assert got.best == 1  # its one run beats the first trial's mean: it is re-evaluated next


def test_the_incumbent_gets_its_seeds_within_the_share_of_compute():
    values = {0: {0: 2.0}, 1: {0: 2.5}}
    measured = estimate(values, minimize=True)
    budget = dict(seeds=2, max_share=0.15, full_tokens=FULL)
    # 10 full search runs spent: one more run would be 1/11 of the compute
    assert next_reevaluation(measured, Spent(10 * FULL, 0), **budget) == (0, 1)
    # 5 spent: 1/6 > 0.15, not yet
    assert next_reevaluation(measured, Spent(5 * FULL, 0), **budget) is None
    # one already running for the incumbent: wait for it
    assert next_reevaluation(measured, Spent(20 * FULL, 0), in_flight={(0, 1)}, **budget) is None
    # seed 1 failed before: seed 2 is next
    assert next_reevaluation(measured, Spent(20 * FULL, 0), taken={(0, 1)}, **budget) == (0, 2)
    # all its seeds done: nothing is due
    done = estimate({0: {0: 2.0, 1: 2.1, 2: 2.0}, 1: {0: 2.5}}, minimize=True)
    assert next_reevaluation(done, Spent(20 * FULL, 2 * FULL), **budget) is None


def simulate(curve, *, sd: float, trials: int, seed: int) -> tuple[list[Run], int | None]:
    """A study whose trial i has true value curve(i) and seed noise sd, run as a worker runs
    it: after each trial the stop rule is checked, then the incumbent is re-evaluated if due
    (2 more seeds, 15% of the compute). Its runs, and the trial count at which it stopped."""
    rng = np.random.default_rng(seed)
    runs: list[Run] = []
    for i in range(trials):
        runs.append(Run(FULL, i, 0, float(curve(i) + rng.normal(0, sd))))
        while True:
            decision = gains_below_noise(runs, minimize=True)
            if decision is not None and decision.stop:
                return runs, i + 1
            measured = estimate(noise.seed_values(runs), minimize=True)
            due = next_reevaluation(
                measured, noise.spent(runs), seeds=2, max_share=0.15, full_tokens=FULL
            )
            if due is None:
                break
            n, k = due
            runs.append(Run(FULL, n, k, float(curve(n) + rng.normal(0, sd)), reevaluation=True))
    return runs, None


@pytest.mark.parametrize("seed", range(10))
def test_the_stop_rule_fires_on_a_flat_objective(seed):
    runs, stopped_at = simulate(lambda i: 2.0, sd=0.05, trials=60, seed=seed)
    assert stopped_at is not None
    decision = gains_below_noise(runs, minimize=True)
    assert decision.improvement < decision.noise_sd


@pytest.mark.parametrize("seed", range(10))
def test_the_stop_rule_does_not_fire_while_the_search_steadily_improves(seed):
    # each trial better than the last by half the noise: over the last third the best
    # improves by several noise sd
    runs, stopped_at = simulate(lambda i: 3.0 - 0.025 * i, sd=0.05, trials=60, seed=seed)
    assert stopped_at is None
    decision = gains_below_noise(runs, minimize=True)
    assert decision is None or decision.improvement > decision.noise_sd


def test_the_stop_rule_waits_for_the_noise_and_enough_trials():
    flat, _ = simulate(lambda i: 2.0, sd=0.05, trials=30, seed=0)
    assert gains_below_noise(flat[:8], minimize=True) is None  # fewer than 10 trials
    no_noise = [r for r in flat if not r.reevaluation]
    assert gains_below_noise(no_noise, minimize=True) is None


def test_a_crashed_reevaluation_is_queued_again_as_what_it_was(tmp_path):
    storage = Storage(
        f"sqlite:///{tmp_path}/s.db",
        heartbeat_interval=1,
        grace_period=1,
        heartbeat_stale_trial_callback=RetryCrashedTrial(),
    )
    study = optuna.create_study(study_name="s", storage=storage)
    study.add_trial(optuna.trial.create_trial(value=2.0))
    seeds_study = noise.open_seeds_study(study)
    records.enqueue(seeds_study, {}, TrialRecord(reevaluates=0, seed_index=2))
    trial = seeds_study.ask()
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)  # its worker died
    optuna.storages.fail_stale_trials(seeds_study)
    dead, retry = seeds_study.get_trials()
    assert dead.state == TrialState.FAIL and retry.state == TrialState.WAITING
    # the retry re-runs the same seed of the same trial; the dead one no longer holds it
    assert noise.pair_of(retry) == (0, 2)
    assert TrialRecord.of(dead).stop_reason == "crashed"


def noise_study(tmp_path, **noise_settings) -> str:
    """The tests' fake trainable (tests/fakes.py: a trial in milliseconds) with a seed noise
    of sd 0.05, every trial trained to the end, with these noise settings."""
    spec = {
        "description": "seed noise, on the fake trainable",
        "search_space": {"tests.fakes:suggest": {}},
        "trainer": {
            "entry": "tests.fakes:quadratic",
            "x": 0.5,
            "noise_sd": 0.05,
            "train.max_steps": 30,
            "train.eval_interval": 10,
            "train.seed": 0,
        },
        "sampler": {"name": "tpe", "n_startup_trials": 3},
        "pruner": {"name": "none"},
        "baseline": {"x": 0.9},
        "noise": noise_settings,
    }
    path = tmp_path / "noisy.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def check_reevaluations(url: str, *, target: int, max_share: float) -> optuna.Study:
    """What any study that re-evaluated must satisfy; returns the companion study."""
    study = optuna.load_study(study_name="noisy", storage=url)
    trials = study.get_trials()
    assert sum(t.state in COUNTED for t in trials) == target  # re-evaluations not counted
    seeds_study = optuna.load_study(study_name="noisy:seeds", storage=url)
    again = seeds_study.get_trials()
    assert not [t for t in [*trials, *again] if t.state == TrialState.RUNNING]
    complete = [t for t in again if t.state == TrialState.COMPLETE]
    assert complete, "no trial was re-evaluated"
    pairs = []
    for t in complete:
        record = TrialRecord.of(t)
        origin = trials[record.reevaluates]
        pairs.append((record.reevaluates, record.seed_index))
        # the record says what trained: the trial's parameters, another seed
        assert t.params == origin.params
        assert record.seed_index >= 1
        seed = TrialRecord.of(origin).manifest["config"]["train.seed"] + record.seed_index
        assert record.derived["train.seed"] == seed
        assert record.manifest["config"]["train.seed"] == seed
    assert len(pairs) == len(set(pairs))  # each seed of each trial trained once
    runs = noise.runs_of(study, seeds_study)
    assert noise.spent(runs).share <= max_share
    return seeds_study


def test_a_study_reevaluates_its_incumbents_with_two_workers(tmp_path, cache_dir):
    path = noise_study(tmp_path, seeds=2, max_share=0.4)
    out = run_hpo(tmp_path, "--study", path, "--trials", "8", "--workers", "2")
    check_reevaluations(sqlite_url(tmp_path), target=8, max_share=0.4)
    study = optuna.load_study(study_name="noisy", storage=sqlite_url(tmp_path))
    measured = noise.measure(study)
    assert measured.sd is not None
    # the summary and validate pick the best on its mean over seeds
    assert f"best: trial {measured.best}, mean {measured.mean(measured.best):.4f}" in out.stderr
    assert "tied with it within noise" in out.stderr
    # the best mean, worked out here from the stored runs
    means = {t.number: [t.value] for t in study.get_trials() if t.state == TrialState.COMPLETE}
    seeds_study = optuna.load_study(study_name="noisy:seeds", storage=sqlite_url(tmp_path))
    for t in seeds_study.get_trials(states=(TrialState.COMPLETE,)):
        means[TrialRecord.of(t).reevaluates].append(t.value)
    assert measured.best == min(means, key=lambda n: sum(means[n]) / len(means[n]))
    chosen = configs_to_validate(study, trial=None, top_k=None)
    assert next(iter(chosen)) == f"trial_{measured.best}"
    assert list(chosen) == [*(f"trial_{n}" for n in measured.tied()[:5]), "baseline"]
    # --top-k ranks on the means as well
    top2 = configs_to_validate(study, trial=None, top_k=2)
    assert list(top2)[:2] == [f"trial_{n}" for n in measured.ranked()[:2]]


def flat_study(tmp_path) -> str:
    """A range so narrow that every trial is the same config up to the noise."""
    path = noise_study(tmp_path, seeds=2, max_share=0.5, stop_below_noise=True)
    spec = yaml.safe_load(Path(path).read_text())
    spec["search_space"]["tests.fakes:suggest"] = {"x": [0.3, 0.301]}
    Path(path).write_text(yaml.safe_dump(spec))
    return path


def test_a_flat_study_stops_below_noise_and_stays_stopped_until_told(tmp_path, cache_dir, capsys):
    path = flat_study(tmp_path)

    def tune_here(*args):
        return here(
            "hpo.run",
            "--storage",
            sqlite_url(tmp_path),
            *args,
            runs=tmp_path / "runs",
            capsys=capsys,
        )

    out = tune_here("--study", path, "--trials", "40")
    assert "stopping the study: the best trial improved by" in out.stderr
    ts = trials_at(tmp_path, "noisy")
    stopped_at = len(ts)
    assert noise.MIN_TRIALS_TO_STOP <= stopped_at < 40
    study = optuna.load_study(study_name="noisy", storage=sqlite_url(tmp_path))
    stopped = study.user_attrs[noise.STOPPED]
    assert stopped["stop"] and stopped["improvement"] < stopped["noise_sd"]
    json.dumps(stopped)  # stored as plain JSON: the dashboard shows it
    # the same command again: still stopped, nothing trained, and it says how to go on
    again = tune_here("--study", path, "--trials", "40")
    assert len(trials_at(tmp_path, "noisy")) == stopped_at
    assert "--no-stop-below-noise" in again.stderr
    # told to run on: trials up to the new total, the stop mark cleared
    tune_here("--study", path, "--trials", str(stopped_at + 2), "--no-stop-below-noise")
    assert len(trials_at(tmp_path, "noisy")) == stopped_at + 2
    study = optuna.load_study(study_name="noisy", storage=sqlite_url(tmp_path))
    assert not study.user_attrs[noise.STOPPED]


@pytest.mark.slow  # PostgreSQL
def test_reevaluations_on_postgresql_with_two_workers(tmp_path, cache_dir, pg_url):
    path = noise_study(tmp_path, seeds=2, max_share=0.4)
    env = {**os.environ, "HPO_RUNS_DIR": str(tmp_path / "runs")}
    run("hpo.run", "--storage", pg_url, "--study", path, "--trials", "8", "--workers", "2", env=env)
    check_reevaluations(pg_url, target=8, max_share=0.4)


@pytest.mark.slow  # a local Ray cluster
def test_a_ray_study_reevaluates_on_the_cluster_between_its_trials(tmp_path, ray_env):
    path = noise_study(tmp_path, seeds=2, max_share=0.5)
    err = run_ray(tmp_path, ray_env, "--study", path, "--trials", "8")
    seeds_study = check_reevaluations(sqlite_url(tmp_path), target=8, max_share=0.5)
    again = [t for t in seeds_study.get_trials() if t.state == TrialState.COMPLETE]
    assert all(TrialRecord.of(t).backend == "ray" for t in again)
    # between the search trials, not all after them: Tune waits for a re-run's slot
    study = optuna.load_study(study_name="noisy", storage=sqlite_url(tmp_path))
    last_search = max(t.datetime_complete for t in study.get_trials())
    assert min(t.datetime_complete for t in again) < last_search
    assert "again with seed +1" in err


@pytest.mark.slow  # a local Ray cluster
def test_a_flat_ray_study_stops_below_noise(tmp_path, ray_env):
    err = run_ray(tmp_path, ray_env, "--study", flat_study(tmp_path), "--trials", "40")
    assert "stopping the study: the best trial improved by" in err
    study = optuna.load_study(study_name="noisy", storage=sqlite_url(tmp_path))
    assert study.user_attrs[noise.STOPPED]["stop"]
    # the searcher asked for no more: the trials running when it fired finish, no new ones
    assert noise.MIN_TRIALS_TO_STOP <= len(study.get_trials()) < 40
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]


def test_a_share_too_small_to_measure_the_noise_is_said_with_one_that_would(tmp_path, monkeypatch):
    """noise.seeds 2 at a 5% share, 8 trials: two trials' re-evaluations would take a third of
    the compute; the summary says so, and what share would measure the noise."""
    monkeypatch.setenv("HPO_RUNS_DIR", str(tmp_path / "runs"))
    request = RunRequest(
        study=noise_study(tmp_path, seeds=2, max_share=0.05),
        trials=8,
        storage=sqlite_url(tmp_path),
    )
    study, plan = open_study(request, load_request(request))
    run_study(study, plan, progress=False)
    text = summary(study, target=8, wall_time_s=1.0)
    # 2 trials x 2 runs x 30 steps against 8 x 30 of search: 120 / 360
    assert "seed noise not measured: the re-evaluations that measure it take 33%" in text
    assert "raise it to 0.35, or run more trials" in text
