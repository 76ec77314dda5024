"""The own-model example (examples/digits.py, studies/digits.yaml) through the commands a user
types: tuned with its accuracy maximized, pruned, killed and resumed, analyzed, validated and
replayed, on the Optuna and the Ray backend."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpo.record import TrialRecord
from hpo.seam import Run, execute
from hpo.trainable import load_trainable
from tests.helpers import (
    counted,
    finish,
    run,
    run_hpo,
    run_ray,
    sets,
    sqlite_url,
    start,
    trials_at,
    trials_so_far,
    wait_for,
)

pytestmark = pytest.mark.slow  # real training in subprocesses

SHORT = sets("train.max_steps=80", "train.eval_interval=20")  # a trial in a fraction of a second


def test_digits_tuned_analyzed_validated_and_replayed(tmp_path, env):
    out = run_hpo(tmp_path, "--study", "digits", "--trials", "8", *SHORT, env=env)
    trials = trials_at(tmp_path, "digits")
    states = Counter(t.state for t in trials)
    assert len(counted(trials)) == 8 and states[TrialState.PRUNED] >= 1  # ASHA at the reports
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)  # maximized
    assert f"best: trial {best.number}, value {best.value:.4f}" in out.stderr
    assert "val/accuracy" in out.stderr
    for t in counted(trials):
        record = TrialRecord.of(t)
        config = record.manifest["config"]
        assert record.manifest["entry"] == "examples.digits:train"
        assert record.manifest["code"]["file"] == "examples/digits.py"
        assert {"init", "data", "global"} <= record.manifest["seeds"].keys()
        assert record.n_params > 0 and record.manifest["device"] == "cpu"
        # the record never lies: the parameters named after config keys are what trained
        for name, value in t.params.items():
            if name in config:
                assert config[name] == value, (t.number, name)
        assert config["train.max_steps"] == 80  # --set, stored with the study
        assert t.value == max(t.intermediate_values.values()) or t.state == TrialState.PRUNED
    assert TrialRecord.of(trials[0]).manifest["config"]["optim.lr"] == 1e-3  # baseline first

    analysis = run("hpo.analyze", "--study", "digits", "--storage", sqlite_url(tmp_path), env=env)
    report = tmp_path / "runs" / "digits" / "report"
    result = json.loads((report / "analysis.json").read_text())
    assert result["best"]["value"] == best.value, analysis.stderr

    validated = run(
        "hpo.validate", "--study", "digits", "--seeds", "6", "--storage", sqlite_url(tmp_path),
        env=env,
    )  # fmt: skip
    rep = json.loads((tmp_path / "runs" / "digits" / "validate" / "validation.json").read_text())
    assert rep["metric"] == "test/accuracy" and rep["seeds"] == 6
    (comparison,) = rep["comparisons"].values()
    direction = "better" if comparison["mean_diff"] > 0 else "worse"  # maximized
    assert direction in comparison["verdict"] or "not distinguishable" in comparison["verdict"]
    assert "test/accuracy" in validated.stdout

    replay = run_hpo(
        tmp_path, "--study", "digits", "--replay", str(best.number), env=env, check=False
    )
    assert replay.returncode == 0 and "match: all" in replay.stdout, replay.stdout + replay.stderr


def test_a_killed_digits_trial_resumes_from_its_last_save_as_if_never_killed(tmp_path, env):
    """kill -9 mid-trial: the retry starts at the step of the function's last run.save, and
    ends with the metrics of a run that was never interrupted (CPU: exactly)."""
    env = {**env, "HPO_HEARTBEAT_S": "1", "HPO_GRACE_S": "3"}
    long = ["--pruner", "none", *sets("train.max_steps=1000", "train.eval_interval=100")]
    args = ["--study", "digits", "--trials", "2", *long]
    proc = start("hpo.run", "--storage", sqlite_url(tmp_path), *args, env=env)

    def mid_trial():
        running = [t for t in trials_so_far(tmp_path, "digits") if t.state == TrialState.RUNNING]
        return next((t for t in running if len(t.intermediate_values) >= 3), None)

    doomed = wait_for(mid_trial, what="a trial three reports in")
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    folder = tmp_path / "runs" / "digits" / "checkpoints" / f"trial_{doomed.number}"
    saved_step = torch.load(folder / "last.pt", weights_only=True)["step"]
    assert saved_step >= 300

    run_hpo(tmp_path, *args, env=env)
    trials = trials_at(tmp_path, "digits")
    dead = trials[doomed.number]
    assert dead.state == TrialState.FAIL and TrialRecord.of(dead).stop_reason == "crashed"
    (retry,) = [t for t in trials if TrialRecord.of(t).retry_of == doomed.number]
    record = TrialRecord.of(retry)
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert record.resumed_from_step == saved_step

    # the same config, never interrupted, in this process with the trial's thread count
    config = record.manifest["config"]
    torch.set_num_threads(record.manifest["threads"])
    uninterrupted = execute(
        load_trainable("examples.digits:train"),
        Run(config, metric="val/accuracy", minimize=False, checkpoint_dir=tmp_path / "again"),
    )
    assert record.metrics == uninterrupted.metrics
    assert retry.value == uninterrupted.best_value


def test_digits_on_ray_with_asha_and_with_pbt(tmp_path, ray_env):
    err = run_ray(tmp_path, ray_env, "--study", "digits", "--trials", "4", *SHORT)
    trials = trials_at(tmp_path, "digits")
    assert len(counted(trials)) == 4
    for t in counted(trials):
        record = TrialRecord.of(t)
        assert record.backend == "ray" and record.manifest["entry"] == "examples.digits:train"
        assert sorted(t.intermediate_values) == list(range(20, record.steps + 1, 20))
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert f"best: trial {best.number}" in err

    # PBT: a member copies a better one's saved weights and goes on with perturbed settings
    pbt = sets("train.max_steps=200", "train.eval_interval=20")
    args = ["--study", "digits", "--study-name", "digits_pbt", "--scheduler", "pbt"]
    run_ray(tmp_path, ray_env, *args, "--trials", "4", *pbt)
    members = trials_at(tmp_path, "digits_pbt")
    assert [t.state for t in members] == [TrialState.COMPLETE] * 4
    lineage = [event for t in members for event in t.user_attrs.get("pbt.lineage", [])]
    assert lineage, "no member exploited another"
    for event in lineage:
        assert event["donor"] is not None and event["step"] > 0


def test_study_settings_the_digits_function_does_not_read_are_refused(tmp_path, env):
    out = run_hpo(tmp_path, "--study", "digits", *sets("model.n_layer=2"), env=env, check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: --set: unknown config key 'model.n_layer'")
    with pytest.raises(KeyError):  # nothing was stored
        optuna.load_study(study_name="digits", storage=sqlite_url(tmp_path))
