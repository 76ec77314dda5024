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
    assert got.paired_sd == pytest.approx(sd, rel=0.25)  # no seed effect here: the same noise
    assert set(got.tied()) == {0, 1}
    assert got.best in (0, 1)
    # maximizing: the same values, the other end
    assert estimate(values, minimize=False).best in range(3, 33)


def test_without_reevaluations_there_is_no_noise_and_the_best_stands_alone():
    got = estimate({0: {0: 2.0}, 1: {0: 2.001}}, minimize=True)
    assert got.sd is None and got.paired_sd is None
    assert got.tied() == [0]


def test_the_draw_a_trial_was_selected_on_is_left_out_of_its_mean():
    # trial 0's own run was lucky: with it, its mean (2.007) would beat trial 1's (2.04)
    values = {0: {0: 1.80, 1: 2.10, 2: 2.12}, 1: {0: 2.00, 1: 2.05, 2: 2.07}}
    got = estimate(values, minimize=True)
    assert got.mean(0) == pytest.approx(2.11) and got.n_seeds(0) == 2
    assert got.best == 1


def test_a_re_evaluated_leader_is_raced_on_its_re_evaluations_and_a_lone_run_on_seed_0():
    budget = dict(seeds=2, max_share=0.5, full_tokens=FULL)
    # trial 0 led on seed 0 (2.00) and was re-evaluated (2.10, 2.12); trial 1 was re-evaluated
    # too and is better on those seeds: the seed-0 leader's luck is found out
    values = {0: {0: 2.00, 1: 2.10, 2: 2.12}, 1: {0: 2.03, 1: 2.05, 2: 2.06}, 2: {0: 2.02}}
    got = estimate(values, minimize=True)
    assert got.ranked() == [1, 0, 2]
    # trial 2 beats trial 1 on seed 0 but not trial 0: not a leader, the challenger
    assert got.best == 1 and got.challenger() == 2
    assert next_reevaluation(got, Spent(20 * FULL, 4 * FULL), **budget) == (2, 1)
    # a lone run that beats every re-evaluated trial on seed 0 leads, as a single-seed study
    # would choose it, and is re-evaluated next as the incumbent
    got = estimate({**values, 3: {0: 1.95}}, minimize=True)
    assert got.best == 3 and got.challenger() is None
    assert got.tied() == [3]  # with the paired noise not measured yet
    assert next_reevaluation(got, Spent(20 * FULL, 4 * FULL), **budget) == (3, 1)
    # once re-evaluated, it is compared on the seeds it shares with the others, its own run
    # left out: worse than trial 1 there, it gives the lead back
    got = estimate({**values, 3: {0: 1.95, 1: 2.09}}, minimize=True)
    assert got.best == 1 and got.ranked()[1] == 3


def test_a_lone_leader_heads_the_tied_set_of_the_re_evaluated_trials():
    rng = np.random.default_rng(4)
    values = {
        n: {k: 2.0 + 0.3 * (n == 2) + rng.normal(0, 0.01) for k in range(3)} for n in range(3)
    }
    values[3] = {0: 1.5}  # leads on seed 0 alone
    got = estimate(values, minimize=True)
    assert got.paired_sd is not None and got.best == 3
    assert got.tied() == [3, *sorted(got.tied()[1:], key=got.fit.adjusted.get)]
    assert set(got.tied()) == {3, 0, 1}  # trial 2 is 30 paired sds worse


def test_trials_whose_seeds_do_not_connect_are_compared_on_their_plain_means():
    # trials 0 and 1 have seed 1 only, trial 2 seed 2 only: no seed effect can be told apart
    got = estimate({0: {0: 2.2, 1: 2.0}, 1: {0: 2.3, 1: 2.0}, 2: {0: 2.4, 2: 1.9}}, minimize=True)
    assert got.fit.adjusted == pytest.approx({0: 2.0, 1: 2.0, 2: 1.9})
    assert got.best == 2
    assert got.fit.difference_se(0, 2) is None  # not comparable on a shared seed


def test_a_config_that_diverged_on_another_seed_is_ranked_last_and_not_rerun():
    values = {0: {0: 1.9, 1: 2.0}, 1: {0: 2.1, 1: 2.2, 2: 2.3}, 2: {0: 2.5}}
    got = estimate(values, minimize=True, diverged={0})  # trial 0's seed 2 blew up
    assert got.ranked() == [1, 2, 0]
    budget = dict(seeds=2, max_share=0.9, full_tokens=FULL)
    assert next_reevaluation(got, Spent(10 * FULL, 3 * FULL), **budget) == (2, 1)
    # from the runs as stored: the diverged re-evaluation is marked, its value dropped
    runs = [
        Run(FULL, 0, 0, 1.9),
        Run(FULL, 0, 1, 2.0, reevaluation=True),
        Run(FULL, 0, 2, None, reevaluation=True, diverged=True),
    ]
    assert noise.estimate_runs(runs, minimize=True).diverged == {0}


def test_trials_are_compared_on_the_seeds_they_share():
    """Seed k gives every config the same start and data order, so part of its luck is shared.
    Planted: trial effects, seed effects of sd 0.2 and a config-by-seed noise of sd 0.02. The
    paired sd recovers 0.02, the within-trial sd holds the seeds' luck too, and a trial whose
    second seed failed (it has seeds 1 and 3, seed 3 an unlucky one) is ranked by its effect
    against one with seeds 1 and 2, not by its plain mean."""
    rng = np.random.default_rng(2)
    seed_luck = {1: 0.0, 2: 0.0, 3: 0.3}
    noise_sd = 0.02

    def runs(effect: float, seeds=(1, 2, 3)) -> dict[int, float]:
        own = {0: effect + rng.normal(0, noise_sd)}
        return own | {k: effect + seed_luck[k] + rng.normal(0, noise_sd) for k in seeds}

    values = {n: runs(2.5 + 0.01 * n) for n in range(20)}
    values[20] = runs(2.0, seeds=(1, 3))  # the best config; its seed 2 failed
    values[21] = runs(2.1, seeds=(1, 2))
    got = estimate(values, minimize=True)
    assert got.mean(20) > got.mean(21)  # its plain mean carries seed 3's bad luck
    assert got.best == 20 and got.ranked()[1] == 21
    assert got.paired_sd == pytest.approx(noise_sd, rel=0.3)
    assert got.sd > 5 * noise_sd  # across seeds: the seeds' own luck as well
    # 0.1 apart, several paired sds: not tied
    assert got.tied() == [20]


def test_the_tied_set_holds_the_truly_best_though_it_was_picked_among_many():
    """20 re-evaluated trials, one truly best by half a paired sd, 2 re-evaluations each and
    seed effects 4 times the noise: the tied set holds the truly best in at least 95% of 400
    studies, while the best on the data alone is it far less often. A trial 5 paired sds worse
    is left out of it in most: on the seeds they share, the seeds' own luck (sd 0.2, which an
    unpaired comparison would count as noise) cancels."""
    rng = np.random.default_rng(3)
    covered = picked = worse_out = 0
    for _ in range(400):
        seed_luck = rng.normal(0, 0.2, size=3)
        effects = np.r_[2.0 - 0.025, np.full(19, 2.0), 2.0 + 0.25]
        values = {
            n: {k: float(e + seed_luck[k] + rng.normal(0, 0.05)) for k in range(3)}
            for n, e in enumerate(effects)
        }
        got = estimate(values, minimize=True)
        covered += 0 in got.tied()
        picked += got.best == 0
        worse_out += 20 not in got.tied()
    assert covered / 400 >= 0.95
    assert picked / 400 < 0.5
    assert worse_out / 400 >= 0.8


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
    # all its seeds done: the challenger (the best lone run) is next, within the share
    done = estimate({0: {0: 2.0, 1: 2.1, 2: 2.0}, 1: {0: 2.5}}, minimize=True)
    assert next_reevaluation(done, Spent(20 * FULL, 2 * FULL), **budget) == (1, 1)
    assert next_reevaluation(done, Spent(10 * FULL, 2 * FULL), **budget) is None  # 3/13
    # and once every trial has its seeds, nothing is due
    both = estimate({0: {0: 2.0, 1: 2.1, 2: 2.0}, 1: {0: 2.5, 1: 2.4, 2: 2.6}}, minimize=True)
    assert next_reevaluation(both, Spent(90 * FULL, 4 * FULL), **budget) is None


def simulate(
    curve, *, sd: float, trials: int, seed: int, luck=(0.0, 0.0, 0.0)
) -> tuple[list[Run], int | None]:
    """A study whose trial i has true value curve(i) and seed noise sd (plus the luck that
    seed k gives every config alike), run as a worker runs it: after each trial the stop rule
    is checked, then the incumbent is re-evaluated if due (2 more seeds, 15% of the compute).
    Its runs, and the trial count at which it stopped."""
    rng = np.random.default_rng(seed)
    runs: list[Run] = []
    for i in range(trials):
        runs.append(Run(FULL, i, 0, float(curve(i) + luck[0] + rng.normal(0, sd))))
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
            value = float(curve(n) + luck[k] + rng.normal(0, sd))
            runs.append(Run(FULL, n, k, value, reevaluation=True))
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


@pytest.mark.parametrize("seed", range(10))
def test_the_stop_rule_reads_gains_on_the_paired_scale(seed):
    """Seeds whose luck (+-0.2) dwarfs the noise between configs on one seed (0.02): the
    search's own runs share seed 0, so a steady gain of 0.01 a trial is real, though far below
    how much a run moves with its seed. The rule does not stop, and reads the paired noise."""
    curve = lambda i: 3.0 - 0.01 * i  # noqa: E731
    runs, stopped_at = simulate(curve, sd=0.02, luck=(0.1, 0.2, -0.2), trials=60, seed=seed)
    assert stopped_at is None
    decision = gains_below_noise(runs, minimize=True)
    assert decision is not None  # the noise was measured: the rule judged, and went on
    assert decision.noise_sd < 0.1 < estimate(noise.seed_values(runs), minimize=True).sd


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
    path = noise_study(tmp_path, seeds=2, max_share=0.5)
    out = run_hpo(tmp_path, "--study", path, "--trials", "8", "--workers", "2")
    check_reevaluations(sqlite_url(tmp_path), target=8, max_share=0.5)
    study = optuna.load_study(study_name="noisy", storage=sqlite_url(tmp_path))
    measured = noise.measure(study)
    assert measured.sd is not None and measured.paired_sd is not None
    assert "tied with it within noise" in out.stderr
    # the best, worked out here from the stored runs: among the re-evaluated trials with the
    # same seeds, the lowest mean over the re-evaluations (its own run left out), unless a lone
    # run beats every re-evaluated trial on seed 0
    again: dict[int, dict[int, float]] = {}
    seeds_study = optuna.load_study(study_name="noisy:seeds", storage=sqlite_url(tmp_path))
    for t in seeds_study.get_trials(states=(TrialState.COMPLETE,)):
        record = TrialRecord.of(t)
        again.setdefault(record.reevaluates, {})[record.seed_index] = t.value
    if measured.best in again:
        best = again[measured.best]
        mean = sum(best.values()) / len(best)
        assert measured.mean(measured.best) == pytest.approx(mean)
        assert f"best: trial {measured.best}, mean {mean:.4f} over its" in out.stderr
        alike = [n for n in again if again[n].keys() == best.keys()]
        assert measured.best == min(alike, key=lambda n: sum(again[n].values()))
    else:
        own = study.trials[measured.best].value
        assert all(own < study.trials[n].value for n in again)
        assert f"best: trial {measured.best}, value {own:.4f} (not re-evaluated" in out.stderr
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
    """noise.seeds 2 at a 5% share, 8 trials: three trials' re-evaluations (trial and seed
    fitted, two degrees of freedom left) would take 43% of the compute; the summary says so,
    and what share would measure the noise."""
    monkeypatch.setenv("HPO_RUNS_DIR", str(tmp_path / "runs"))
    request = RunRequest(
        study=noise_study(tmp_path, seeds=2, max_share=0.05),
        trials=8,
        storage=sqlite_url(tmp_path),
    )
    study, plan = open_study(request, load_request(request))
    run_study(study, plan, progress=False)
    text = summary(study, target=8, wall_time_s=1.0)
    # 3 trials x 2 runs x 30 steps against 8 x 30 of search: 180 / 420
    assert "the re-evaluations that measure it (3 trials' 2 seeds) take 43%" in text
    assert "raise it to 0.45, or run more trials" in text
