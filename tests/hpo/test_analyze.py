"""hpo.analyze on studies with a planted structure, and on partial and odd ones."""

import json
import os
import subprocess
import sys

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from hpo.analysis import plots
from hpo.analysis.analyze import analyze, attach
from hpo.analysis.importance import importance_intervals
from tests.helpers import here

optuna.logging.set_verbosity(optuna.logging.WARNING)


def planted_study(n=60, storage=None, name="planted"):
    """Only x matters; y and z are noise-free distractors."""
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    rng = np.random.default_rng(0)

    def objective(trial):
        x = trial.suggest_float("x", -1, 1)
        trial.suggest_float("y", -1, 1)
        trial.suggest_categorical("z", ["a", "b", "c"])
        for step in (10, 20):
            trial.report(x**2 + 0.01 * rng.normal() + 1 / step, step)
        return x**2 + 0.01 * rng.normal()

    study.optimize(objective, n_trials=n)
    return study


def test_the_parameter_that_matters_comes_first_with_a_clear_interval():
    study = planted_study()
    imp = importance_intervals(study.trials, direction=study.direction, n_resamples=10)
    assert imp.index[0] == "x"
    assert imp.loc["x", "low"] > max(imp.loc["y", "high"], imp.loc["z", "high"])
    assert not imp.loc["x", "unstable"]
    assert imp.loc["y", "unstable"] and imp.loc["z", "unstable"]  # noise: no trustworthy order


def test_ped_anova_agrees():
    study = planted_study()
    imp = importance_intervals(
        study.trials, direction=study.direction, evaluator="ped-anova", n_resamples=5
    )
    assert imp.index[0] == "x"


def test_a_best_value_at_a_bound_triggers_the_range_warning():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(
        lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) + 0 * t.suggest_float("d", 0, 1),
        n_trials=80,
    )
    result = analyze(study, resamples=3)
    [warning] = result["range_warnings"]
    assert warning.startswith("lr: ") and "low edge of [0.0001, 0.01] (log scale)" in warning
    assert "widen the low bound from 0.0001 to about 1e-05" in warning


def test_interior_optimum_gives_no_warning():
    study = planted_study()
    assert analyze(study, resamples=3)["range_warnings"] == []


def test_sensitivity_and_pruning_stats():
    study = planted_study()
    result = analyze(study, resamples=3)
    rho = {r["param"]: r["spearman"] for r in result["sensitivity"]}
    assert set(rho) == {"x", "y"}  # categorical z has no rank correlation
    assert abs(rho["y"]) < 0.4


def test_odd_studies_are_handled_plainly():
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_categorical("c", ["a", "b"]) == "a", n_trials=3)
    study.ask()  # a running trial
    study.tell(study.ask(), state=TrialState.FAIL)
    result = analyze(study, resamples=3)
    assert result["importance"] is None
    assert "importance skipped: 3 completed trials, fanova needs at least 8" in result["notes"][0]
    assert result["trials"]["running"] == 1 and result["trials"]["fail"] == 1

    one = optuna.create_study()
    one.optimize(lambda t: t.suggest_float("only", 0, 1), n_trials=12)
    imp = analyze(one, resamples=3)["importance"]
    assert [row["param"] for row in imp] == ["only"] and imp[0]["importance"] == pytest.approx(1.0)

    categorical = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    categorical.optimize(
        lambda t: (
            {"a": 0, "b": 1, "c": 2}[t.suggest_categorical("k", ["a", "b", "c"])]
            + 0 * len(t.suggest_categorical("j", ["u", "v"]))
        ),
        n_trials=30,
    )
    imp = analyze(categorical, resamples=3)["importance"]
    assert imp[0]["param"] == "k"


def test_report_files_and_attachment(tmp_path, monkeypatch):
    monkeypatch.setenv("HPO_RUNS_DIR", str(tmp_path / "runs"))
    storage = f"sqlite:///{tmp_path}/a.db"
    study = planted_study(storage=storage)
    out = tmp_path / "report"
    analyze(study, resamples=3, out=out)
    for name in (
        "optimization_history",
        "parallel_coordinate",
        "slice",
        "contour",
        "intermediate_values",
        "edf",
        "importance",
        "learning_curves",
    ):
        assert (out / f"{name}.html").stat().st_size > 1000 and (
            out / f"{name}.png"
        ).stat().st_size > 1000
    summary = (out / "summary.md").read_text()
    assert "| 1 | x |" in summary
    assert attach(study, out, summary) == 9
    attach(study, out, summary)  # again: replaces, does not duplicate
    metas = optuna.artifacts.get_all_artifact_meta(study)
    assert len(metas) == 9 and {m.filename for m in metas} >= {"importance.png", "summary.md"}
    import optuna_dashboard

    assert optuna_dashboard.get_note(study) == summary


def test_cli_on_an_unknown_study_is_one_line_exit_2(tmp_path):
    env = {**os.environ, "HPO_RUNS_DIR": str(tmp_path / "runs")}
    storage = f"sqlite:///{tmp_path}/a.db"
    planted_study(n=5, storage=storage, name="exists")
    out = subprocess.run(
        [sys.executable, "-m", "hpo.analyze", "--study", "nope", "--storage", storage],
        capture_output=True,
        text=True,
        env=env,
    )
    assert (
        out.returncode == 2
        and out.stderr == f"error: no study 'nope' in {storage}; studies there: exists\n"
    )


def test_cli_writes_the_report(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/a.db"
    planted_study(n=30, storage=storage)
    args = ["--study", "planted", "--storage", storage, "--resamples", "3"]
    out = here("hpo.analyze", *args, runs=tmp_path / "runs", capsys=capsys, check=False)
    assert out.returncode == 0, out.stderr
    assert "# Analysis of planted" in out.stdout and "attached 9 files" in out.stderr
    data = json.loads((tmp_path / "runs" / "planted" / "report" / "analysis.json").read_text())
    assert data["importance"][0]["param"] == "x"


def conditional_study(n=60):
    """Hyperband-like: beta1 (Adam only) drives the objective, and trials that start badly are
    pruned at step 10 or 20, so most trials are PRUNED."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    rng = np.random.default_rng(0)
    for _ in range(n):
        trial = study.ask()
        name = trial.suggest_categorical("optim.name", ["adamw", "sgd"])
        trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)
        if name == "adamw":
            value = 4 * trial.suggest_float("optim.one_minus_beta1", 0.01, 0.3, log=True)
        else:
            value = 0.5 + 0.1 * trial.suggest_float("optim.one_minus_momentum", 0.01, 0.5, log=True)
        last = 10 if value > 0.6 else 20 if value > 0.3 else 30
        reported = [value + 1 / step + 0.01 * rng.normal() for step in range(10, last + 1, 10)]
        for i, v in enumerate(reported):
            trial.report(v, 10 * (i + 1))
        if last < 30:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, min(reported))
    return study


def test_the_summary_says_what_was_compared_and_how(tmp_path):
    study = conditional_study()
    result = analyze(study, resamples=5, out=tmp_path / "report")
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert result["compared"]["step"] == 20 and result["compared"]["pruned"] > 0
    assert "compare each trial's best value up to step 20" in summary
    assert (
        "Method: fanova, 5 bootstrap resamples; importance is scored within conditions" in summary
    )
    assert "### Scored on: optim.name = adamw (24 trials)" in summary
    assert "| 1 | optim.one_minus_beta1 | " in summary
    assert "## Conditions (trials with the same parameters)" in summary
    assert "optim.name not scored: constant within every condition" in summary
    # the trials pruned before the common rung are not compared: the report says so and why
    before = sum(t.state == TrialState.PRUNED and t.last_step < 20 for t in study.get_trials())
    assert before > 0
    assert f"{before} pruned trials are left out before step 20 of importance" in summary
    assert "understate what pruning selected on" in summary
    final = analyze(study, resamples=5, values="final")
    assert final["compared"]["step"] is None
    assert final["compared"]["trials"] == result["trials"]["complete"]
    assert any("pruned trials are left out (final values)" in n for n in final["notes"])


def test_no_completed_trial_yet_still_writes_the_summary(tmp_path):
    env = {**os.environ, "HPO_RUNS_DIR": str(tmp_path / "runs")}
    storage = f"sqlite:///{tmp_path}/a.db"
    study = optuna.create_study(study_name="early", storage=storage)
    study.ask()  # running
    study.tell(study.ask(), state=TrialState.FAIL)
    out = subprocess.run(
        [sys.executable, "-m", "hpo.analyze", "--study", "early", "--storage", storage],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 1, out.stderr
    assert "no trial of study 'early' has completed yet" in out.stderr
    summary = (tmp_path / "runs" / "early" / "report" / "summary.md").read_text()
    assert "No trial has completed yet." in summary and "Traceback" not in out.stderr


def test_plots_of_a_parameter_with_one_value_say_nothing_on_stderr(tmp_path, capfd):
    """A conditional parameter can have one value among the trials a plot shows; Optuna's
    warning about it does not reach the user's terminal (the plot shows it)."""
    study = optuna.create_study()
    for i in range(6):
        study.add_trial(
            optuna.trial.create_trial(
                value=float(i),
                params={"a": i / 10, "b": 1.0},
                distributions={
                    "a": optuna.distributions.FloatDistribution(0, 1),
                    "b": optuna.distributions.FloatDistribution(0, 2),
                },
            )
        )
    files = plots.save_all(study, study.trials[:3], None, ["a", "b"], tmp_path)
    assert tmp_path / "contour.png" in files
    assert "unique value length" not in capfd.readouterr().err
