"""hpo.validate with the real trainer on tiny configs."""

import json
import os

import optuna
import pytest

from hpo.gpt import PAIRING_KEYS
from hpo.validation.report import markdown
from hpo.validation.validate import ATTR, configs_to_validate, report, validate
from tests.helpers import here, run, run_hpo, sets, sqlite_url


@pytest.fixture
def study(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("HPO_RUNS_DIR", str(tmp_path / "runs"))
    run_hpo(tmp_path, "--study", "smoke", "--trials", "3", "--pruner", "none")
    return optuna.load_study(study_name="smoke", storage=sqlite_url(tmp_path))


def validate_cli(tmp_path, *args):
    env = {**os.environ, "HPO_RUNS_DIR": str(tmp_path / "runs")}
    return run("hpo.validate", "--storage", sqlite_url(tmp_path), *args, env=env, check=False)


@pytest.mark.slow  # a study tuned and its seeds trained
def test_learning_rate_1e3_beats_1e5_beyond_noise(study):
    configs = configs_to_validate(study, trial=None, top_k=1)
    label = next(k for k in configs if k != "baseline")
    good = {**configs["baseline"], "optim.lr": 1e-3, "train.max_steps": 40}
    bad = {**good, "optim.lr": 1e-5}
    configs = {label: good, "baseline": bad}
    # up to 10 seeds, added in rounds: a difference this clear settles at the first look
    per_config = validate(study, configs, seeds=10, workers=1, progress=False, sequential=True)
    assert [len(rows) for rows in per_config.values()] == [6, 6]
    rep = report(study, per_config, configs, max_seeds=10, pairing_keys=PAIRING_KEYS)
    c = rep["comparisons"][label]
    # 6 pairs, all one way: exact p = 2/2^6 = 0.031, within the first look's boundary
    assert c["ci_high"] < 0 and c["d_z"] < -2 and c["p_value"] <= c["sequential"]["boundary"]
    assert c["verdict"].startswith("better than the baseline beyond seed-to-seed noise")
    assert "settled after 6 of up to 10 seeds" in markdown(rep)
    assert validate(study, configs, seeds=6, workers=1, progress=False) == per_config  # stored
    assert c["unpaired"] == []  # same shapes: a seed gives both the same weights and batches
    # the first 4 of those seeds point the same way, yet 4 pairs can never reach p < 0.05
    four = report(study, {k: rows[:4] for k, rows in per_config.items()})["comparisons"][label]
    assert four["ci_high"] < 0 and four["p_value"] == 0.125
    assert four["verdict"].startswith("not distinguishable from the baseline: 4 paired seeds")
    assert "the data lean better" in four["verdict"]


@pytest.mark.slow  # a study tuned and its seeds trained
def test_identical_configs_are_not_distinguishable(study):
    configs = configs_to_validate(study, trial=None, top_k=1)
    label = next(k for k in configs if k != "baseline")
    same = {**configs["baseline"], "train.max_steps": 20}
    per_config = validate(
        study, {label: same, "baseline": same}, seeds=3, workers=2, progress=False
    )
    rep = report(study, per_config)
    c = rep["comparisons"][label]
    assert c["ci_low"] <= 0 <= c["ci_high"] and c["mean_diff"] == 0
    # each seed trained once for both labels (its wall time would differ if trained twice)
    assert per_config[label] == per_config["baseline"]


@pytest.mark.slow  # a study tuned and its seeds trained
def test_cli_reports_stores_each_seed_and_resumes_without_retraining(tmp_path, study):
    first = validate_cli(tmp_path, "--study", "smoke", "--seeds", "2")
    assert first.returncode == 0, first.stderr
    assert "warning: 2 paired seeds can never show a difference beyond" in first.stderr
    assert (
        "vs baseline**: test/loss difference" in first.stdout
        and "Winner's optimism" in first.stdout
    )
    stored = {
        k: v
        for k, v in optuna.load_study(
            study_name="smoke", storage=f"sqlite:///{tmp_path}/hpo.db"
        ).user_attrs.items()
        if k.startswith(ATTR) and k != f"{ATTR}.report" and ".plan." not in k
    }
    assert len(stored) == 4  # 2 configs x 2 seeds
    # asked again with more seeds, the comparison keeps the plan of its first run
    again = validate_cli(tmp_path, "--study", "smoke", "--seeds", "3")
    assert again.returncode == 0 and "planned at its first run with up to 2 seeds" in again.stderr
    smoke = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path}/hpo.db")
    assert {k: v for k, v in smoke.user_attrs.items() if k in stored} == stored
    # what a run of --seeds 3 killed after two seeds leaves: its plan, two seeds of each config
    (plan_key,) = [k for k in smoke.user_attrs if k.startswith(f"{ATTR}.plan.")]
    smoke.set_user_attr(plan_key, {"max_seeds": 3, "sequential": False})
    again = validate_cli(tmp_path, "--study", "smoke", "--seeds", "3", "--workers", "2")
    assert again.returncode == 0, again.stderr
    after = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path}/hpo.db").user_attrs
    assert all(after[k] == v for k, v in stored.items())  # finished seeds were not trained again
    seeds = [k for k in after if k.startswith(ATTR) and k != f"{ATTR}.report" and ".plan." not in k]
    assert len(seeds) == 6
    rep = json.loads((tmp_path / "runs" / "smoke" / "validate" / "validation.json").read_text())
    assert rep["seeds"] == 3 and set(rep["configs"]) == {
        f"trial_{study.best_trial.number}",
        "baseline",
    }
    assert (tmp_path / "runs" / "smoke" / "validate" / "validation.png").exists()
    metas = optuna.artifacts.get_all_artifact_meta(
        optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path}/hpo.db")
    )
    assert {m.filename for m in metas} == {"validation.png", "validation.md"}


@pytest.mark.slow  # a study tuned and its seeds trained
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--seeds", "1"],
            "error: --seeds must be at least 2 to measure seed-to-seed noise, but got 1",
        ),
        (["--trial", "99"], "error: trial 99 of 'smoke' is not a completed trial"),
        (["--study", "nope"], "error: no study 'nope' in sqlite:///"),
    ],
)
def test_cli_refuses_clearly(tmp_path, study, args, message):
    args = args if "--study" in args else ["--study", "smoke", *args]
    out = validate_cli(tmp_path, *args)
    assert out.returncode == 2 and out.stderr.startswith(message) and out.stderr.count("\n") == 1


def test_refuses_a_study_without_completed_trials_or_baseline(tmp_path, cache_dir, capsys):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    where = {"runs": tmp_path / "runs", "capsys": capsys, "check": False}
    empty = optuna.create_study(study_name="empty", storage=storage)
    empty.set_user_attr(
        "hpo.spec", {"description": "x", "search_space": {"optimizer": {}}, "baseline": {}}
    )
    out = here("hpo.validate", "--storage", storage, "--study", "empty", **where)
    assert out.returncode == 2 and "has no completed trial to validate" in out.stderr
    nobase = optuna.create_study(study_name="nobase", storage=storage)
    nobase.set_user_attr("hpo.spec", {"description": "x", "search_space": {"optimizer": {}}})
    out = here("hpo.validate", "--storage", storage, "--study", "nobase", **where)
    assert out.returncode == 2 and "has no baseline to compare against" in out.stderr


@pytest.mark.slow  # a study tuned and its seeds trained
def test_analysis_rewrites_its_note_but_keeps_the_validation_section(tmp_path, study):
    import optuna_dashboard

    from hpo.analysis.analyze import analyze
    from hpo.analysis.analyze import attach as attach_analysis

    assert validate_cli(tmp_path, "--study", "smoke", "--seeds", "2").returncode == 0
    out = tmp_path / "report"
    analyze(study, resamples=2, out=out)
    attach_analysis(study, out, (out / "summary.md").read_text())
    note = optuna_dashboard.get_note(study)
    assert (
        note.startswith("# Analysis of smoke")
        and "## Validation on the test split (2 paired seeds)" in note
    )


def test_winners_optimism_is_in_the_units_of_the_studys_metric():
    study = optuna.create_study()
    study.set_user_attr("hpo.spec", {"objective": {"metric": "val/bpb"}})
    study.add_trial(optuna.trial.create_trial(value=1.50))  # a value in bits per byte
    rows = [
        {"val/loss": 1.05 + i / 100, "val/bpb": 1.52 + i / 100, "test/loss": 1.1, "test/bpb": 1.6}
        for i in range(3)
    ]
    c = report(study, {"trial_0": rows, "baseline": rows})["comparisons"]["trial_0"]
    assert c["metric"] == "val/bpb" and c["multi_seed_value"] == pytest.approx(1.53)
    assert c["winners_optimism"] == pytest.approx(0.03)  # bpb against bpb, never nats


@pytest.mark.slow  # a study tuned and its seeds trained
def test_a_study_without_a_test_split_is_refused_before_any_training(tmp_path, cache_dir):
    storage = sqlite_url(tmp_path)
    no_test_split = sets("data.splits=0.95,0.05,0", "train.max_steps=20")
    run_hpo(tmp_path, "--study", "smoke", "--trials", "2", *no_test_split)
    out = validate_cli(tmp_path, "--study", "smoke", "--seeds", "2")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: the test split of corpus 'stdlib' has 0 tokens")
    stored = optuna.load_study(study_name="smoke", storage=storage).user_attrs
    assert not [k for k in stored if k.startswith(ATTR)]  # not a seed was trained
    assert not (tmp_path / "runs" / "smoke" / "validate").exists()
