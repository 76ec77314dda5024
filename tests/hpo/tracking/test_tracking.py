"""Tracking to W&B (offline) and MLflow (local SQLite store), read back from what they wrote.

W&B offline runs keep everything in one `run-<id>.wandb` file: a LevelDB-style log of protobuf
records (wandb 0.31 writes no config.yaml or wandb-summary.json offline, and has no Python
reader any more), so `wandb_run` below decodes it: 7-byte header, then 32 KiB blocks of
records, each with a 7-byte header (crc32, length, type: full/first/middle/last).
"""

import json
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.objective import Objective, TrialFailed
from hpo.record import TrialRecord
from hpo.study_spec import StudySpec, load_study_spec
from hpo.tracking import Tracker, Tracking, resolve_tracking, tracking_from_study, wandb_mode
from hpo.validation.validate import validate
from tests.helpers import SMOKE_FAST, fake_study, run_hpo, sqlite_url


def run_smoke(tmp_path, *, trials, tracking, uri=None, env=None):
    """hpo.run on the smoke study with short trials, tracking to `tracking` (at `uri`)."""
    args = ["--study", "smoke", "--trials", str(trials), *SMOKE_FAST, "--tracking", tracking]
    env = {**(env or os.environ), "HPO_RUNS_DIR": str(tmp_path / "runs")}
    return run_hpo(tmp_path, *args, *(["--tracking-uri", uri] if uri else []), env=env)


def load_trials(tmp_path, name="smoke"):
    study = optuna.load_study(study_name=name, storage=sqlite_url(tmp_path))
    return study, study.get_trials()


def offline_env(tmp_path):
    """No API key, no netrc, W&B's folders under tmp_path: hpo must pick offline by itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    home = tmp_path / "home"
    home.mkdir()
    return {
        **env,
        "HOME": str(home),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }


def wandb_run(run_dir: Path) -> dict:
    """name, group, tags, config, summary and history of one offline W&B run."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    records, pos, partial, block = [], 7, b"", 32768
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(data)
        elif kind in (2, 3):
            partial += data
        elif kind == 4:
            records.append(partial + data)
            partial = b""
    out = {"config": {}, "summary": {}, "history": [], "exit_code": None}
    for data in records:
        rec = pb.Record()
        rec.ParseFromString(data)
        which = rec.WhichOneof("record_type")
        if which == "run":
            out.update(name=rec.run.display_name, group=rec.run.run_group, tags=list(rec.run.tags))
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif which == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif which == "summary":
            for i in rec.summary.update:
                out["summary"][i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
        elif which == "history":
            row = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item
            }
            out["history"].append(row)
        elif which == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out


def trained_lr(t):
    """The learning rate a smoke trial sampled: SGD's has a range and a name of its own."""
    return t.params.get("optim.lr", t.params.get("optim.sgd_lr"))


@pytest.mark.slow  # real studies tracked end to end
def test_wandb_offline_one_run_per_trial_with_config_and_val_loss_history(tmp_path, cache_dir):
    wandb_dir = tmp_path / "wb"
    out = run_smoke(
        tmp_path, trials=4, tracking="wandb", uri=str(wandb_dir), env=offline_env(tmp_path)
    )
    assert f"wandb sync {wandb_dir}/wandb/offline-run-*" in out.stderr  # offline by itself
    study, trials = load_trials(tmp_path)
    runs = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(trials) == 4 and len(runs) == 4  # one run per trial
    by_name = {}
    for d in runs:
        run = wandb_run(d)
        by_name[run["name"]] = (d, run)
    assert sorted(by_name) == [f"trial_{t.number}" for t in trials]
    for t in trials:
        d, run = by_name[f"trial_{t.number}"]
        assert t.user_attrs["tracking"]["dir"] == str(d)
        assert run["group"] == "smoke"
        # the full resolved config, the sampled parameters, and the manifest
        assert run["config"]["optim"]["lr"] == trained_lr(t)
        stored = TrialRecord.of(t).manifest
        model = {k.split(".", 1)[1]: v for k, v in stored["config"].items() if k[:6] == "model."}
        assert run["config"]["model"] == model
        assert run["config"]["hpo"]["params"] == t.params
        manifest = run["config"]["manifest"]
        assert manifest["data"]["fingerprint"] == stored["data"]["fingerprint"]
        assert manifest["git"] == stored["git"]
        written = json.loads((d / "files" / "manifest.json").read_text())
        assert written["config"]["optim.lr"] == trained_lr(t)
        # val/loss at the steps the pruner saw
        history = {row["_step"]: row["val/loss"] for row in run["history"] if "val/loss" in row}
        assert history == t.intermediate_values
        assert all("train/loss" in row for row in run["history"])
        state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}[t.state]
        assert state in run["tags"] and run["exit_code"] == 0
        assert run["summary"]["best/val/loss"] == min(t.intermediate_values.values())
        if t.state == TrialState.COMPLETE:
            assert run["summary"]["best/val/loss"] == t.value
    assert study.user_attrs["hpo.tracking"]["backend"] == "wandb"


@pytest.mark.slow  # real studies tracked end to end
@pytest.mark.filterwarnings("ignore:.*noload.*:DeprecationWarning")  # MLflow's SQL store
def test_mlflow_parent_run_with_nested_trial_runs_and_validation(tmp_path, cache_dir):
    from mlflow import MlflowClient

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    run_smoke(tmp_path, trials=3, tracking="mlflow", env=env)
    uri = f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}"  # the default store
    study, trials = load_trials(tmp_path)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hpo")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("hpo.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_name == "smoke" and parent.info.status == "FINISHED"
    assert parent.data.metrics["best/value"] == study.best_value
    assert study.user_attrs["hpo.tracking"]["parent_run_id"] == parent.info.run_id
    assert sorted(r.info.run_name for r in children) == [f"trial_{t.number}" for t in trials]
    for t in trials:
        (run,) = [r for r in children if r.info.run_name == f"trial_{t.number}"]
        assert t.user_attrs["tracking"]["run_id"] == run.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["hpo.state"] == t.state.name.lower()
        assert float(run.data.params["optim.lr"]) == trained_lr(t)
        assert run.data.params["train.max_steps"] == "30"
        history = client.get_metric_history(run.info.run_id, "val/loss")
        assert {m.step: m.value for m in history} == t.intermediate_values
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) == len(history)
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
            "manifest.json",
            "config.json",
        }
        fingerprint = TrialRecord.of(t).manifest["data"]["fingerprint"]
        assert run.data.tags["hpo.corpus_fingerprint"] == fingerprint

    # hpo.validate: one run per (config, seed), nested under the same study run
    tracking = Tracking("mlflow", uri, "hpo", "smoke", parent_run_id=parent.info.run_id)
    config = TrialRecord.of(trials[0]).manifest["config"]
    baseline = {"baseline": {**config, "train.max_steps": 20}}
    validate(study, baseline, seeds=2, workers=1, progress=False, tracking=tracking)
    seeds = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`hpo.kind` = 'validate'"
    )
    assert sorted(r.info.run_name for r in seeds) == ["baseline_seed1000", "baseline_seed1001"]
    assert {r.data.tags["mlflow.parentRunId"] for r in seeds} == {parent.info.run_id}
    for r in seeds:
        assert r.info.status == "FINISHED" and "test/loss" in r.data.metrics
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/loss")] == [10, 20]


@pytest.mark.slow  # W&B's and MLflow's own processes and stores
def test_user_code_is_tracked_as_the_builtin_trainer_is(tmp_path):
    """The fake trainable (tests/fakes.py) with --tracking wandb and --tracking mlflow: a run
    per trial with its config and every report at its step."""
    study = fake_study(tmp_path)
    args = ["--study", study, "--trials", "3", "--pruner", "none", "--tracking"]
    env = {**offline_env(tmp_path), "HPO_RUNS_DIR": str(tmp_path / "runs")}
    run_hpo(tmp_path, *args, "wandb", "--tracking-uri", str(tmp_path / "wb"), env=env)
    _, trials = load_trials(tmp_path, "fake")
    runs = [wandb_run(d) for d in sorted((tmp_path / "wb" / "wandb").glob("offline-run-*"))]
    assert sorted(r["name"] for r in runs) == [f"trial_{t.number}" for t in trials]
    for r in runs:
        t = trials[int(r["name"].removeprefix("trial_"))]
        assert r["config"]["x"] == t.params["x"] and r["config"]["train"]["max_steps"] == 40
        steps = {row["_step"]: row["val/accuracy"] for row in r["history"] if "val/accuracy" in row}
        assert steps == t.intermediate_values

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    name = ["--study-name", "fake-mlflow"]
    run_hpo(tmp_path, *args, "mlflow", "--tracking-uri", uri, *name, env=env)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    _, trials = load_trials(tmp_path, "fake-mlflow")
    (experiment,) = [e for e in client.search_experiments() if e.name == "hpo"]
    kind = "tags.`hpo.kind` = 'trial'"
    runs = client.search_runs([experiment.experiment_id], filter_string=kind)
    assert len(runs) == 3
    for r in runs:
        t = trials[int(r.info.run_name.removeprefix("trial_"))]
        history = client.get_metric_history(r.info.run_id, "val/accuracy")
        assert {m.step: m.value for m in history} == t.intermediate_values


@pytest.mark.slow  # real studies tracked end to end
def test_unreachable_mlflow_server_warns_once_and_trials_complete(tmp_path, cache_dir):
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    out = run_smoke(tmp_path, trials=2, tracking="mlflow", uri="http://127.0.0.1:9", env=env)
    assert out.stderr.count("tracking to mlflow at http://127.0.0.1:9 failed") == 1, out.stderr
    _, trials = load_trials(tmp_path)
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all("tracking" not in t.user_attrs for t in trials)


@pytest.mark.slow  # real studies tracked end to end
def test_unwritable_wandb_folder_warns_once_and_trials_complete(tmp_path, cache_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder under a file cannot be made, even by root
    uri, env = str(blocker / "wandb"), offline_env(tmp_path)
    out = run_smoke(tmp_path, trials=2, tracking="wandb", uri=uri, env=env)
    assert out.stderr.count("tracking to wandb at") == 1, out.stderr
    assert "Not a directory" in out.stderr and "wandb sync" not in out.stderr
    _, trials = load_trials(tmp_path)
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)


class Exploding(Tracker):
    """A backend that breaks at the first evaluation of the first trial."""

    def __init__(self):
        super().__init__(Tracking(backend="mlflow", uri="test://"))
        self.calls = []

    def _start(self, name, *, config, kind, meta):
        self.calls.append(("start", name))
        return {"run_id": name}

    def _log(self, step, metrics):
        self.calls.append(("log", step))
        raise ConnectionError("the server went away")


def test_a_tracker_failing_mid_trial_warns_once_and_turns_off(cache_dir, tmp_path, caplog):
    spec = load_study_spec("smoke")
    tracker = Exploding()
    objective = Objective(
        spec,
        sets={"train.max_steps": 20},
        target=3,
        checkpoint_root=tmp_path / "ckpt",
        tracker=tracker,
    )
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    with caplog.at_level(logging.WARNING, logger="hpo.tracking"):
        study.optimize(objective, n_trials=3)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    # the guard's warning, from hpo.tracking.base
    warnings = [r for r in caplog.records if r.name.startswith("hpo.tracking")]
    assert (
        len(warnings) == 1 and "ConnectionError: the server went away" in warnings[0].getMessage()
    )
    assert tracker.calls == [("start", "trial_0"), ("log", 10)]  # off after the failure
    assert (tmp_path / "ckpt" / "trial_2" / "manifest.json").exists()


def test_null_tracker_is_the_default_and_does_nothing(cache_dir, tmp_path):
    spec = load_study_spec("smoke")
    objective = Objective(spec, sets={"train.max_steps": 10}, target=1, checkpoint_root=tmp_path)
    assert type(objective.tracker) is Tracker and objective.tracker.off
    study = optuna.create_study()
    study.optimize(objective, n_trials=1)
    assert (
        study.trials[0].state == TrialState.COMPLETE
        and "tracking" not in study.trials[0].user_attrs
    )


@pytest.mark.parametrize(
    ("env", "netrc", "mode"),
    [
        ({}, None, "offline"),
        ({"WANDB_API_KEY": "x" * 40}, None, "online"),
        ({}, "machine api.wandb.ai login user password " + "x" * 40, "online"),
        ({"WANDB_API_KEY": "x" * 40, "WANDB_MODE": "offline"}, None, "offline"),
        ({"WANDB_MODE": "disabled"}, None, "disabled"),
    ],
)
def test_wandb_goes_offline_without_an_api_key(tmp_path, monkeypatch, env, netrc, mode):
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    if netrc:
        (tmp_path / ".netrc").write_text(netrc + "\n")
        (tmp_path / ".netrc").chmod(0o600)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert wandb_mode() == mode


def test_tracking_settings_from_the_study_and_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("HPO_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = StudySpec(description="x", search_space={"optimizer": {}}, tracking="mlflow")
    assert spec.tracking.backend == "mlflow"
    t = resolve_tracking(spec.tracking.backend, uri=spec.tracking.uri, study="s")
    assert t.uri == f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}"
    assert t.project == "hpo" and t.study == "s"
    assert resolve_tracking(None) == Tracking()
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text("description: x\nsearch_space: {optimizer: {}}\ntracking: neptune\n")
    storage = f"sqlite:///{tmp_path}/hpo.db"
    argv = [sys.executable, "-m", "hpo.run", "--study", str(spec_file), "--storage", storage]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert (
        out.returncode == 2 and "tracking.backend" in out.stderr and "Traceback" not in out.stderr
    )


def test_a_joining_worker_finds_the_study_tracking():
    study = optuna.create_study(study_name="s")
    assert tracking_from_study(study) == Tracking()
    study.set_user_attr(
        "hpo.tracking",
        {
            "backend": "mlflow",
            "uri": "sqlite:////x/mlflow.db",
            "project": "p",
            "parent_run_id": "abc",
        },
    )
    assert tracking_from_study(study) == Tracking(
        "mlflow", "sqlite:////x/mlflow.db", "p", "s", "abc"
    )


class Recording(Tracker):
    def __init__(self):
        super().__init__(Tracking(backend="wandb"))
        self.ends = []

    def _finish(self, state, reason):
        self.ends.append((state, reason))


def test_each_run_ends_with_the_trial_state(cache_dir, tmp_path):
    spec = load_study_spec("smoke")
    tracker = Recording()
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))  # prunes all
    objective = Objective(
        spec, sets={"train.max_steps": 20}, target=9, checkpoint_root=tmp_path, tracker=tracker
    )
    study.optimize(objective, n_trials=1)
    objective.spec = spec.model_copy(
        update={"search_space": {"optimizer": {"sgd_lr": [1e10, 1e12], "names": ["sgd"]}}}
    )
    objective.sets = {"optim.grad_clip": 0, "schedule.warmup_frac": 0, "train.max_steps": 40}
    study.optimize(objective, n_trials=1)  # diverges: pruned at the step it blew up
    objective.sets = {"data.corpus": str(tmp_path / "gone.txt")}  # a usage error inside a trial
    study.optimize(objective, n_trials=1, catch=(TrialFailed,))
    objective.spec, objective.sets = spec, {"train.max_steps": 20}
    study.pruner = optuna.pruners.NopPruner()
    study.optimize(objective, n_trials=1)
    assert [t.state for t in study.trials] == [
        TrialState.PRUNED,
        TrialState.PRUNED,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    assert TrialRecord.of(study.trials[1]).stop_reason == "diverged"
    unusable = TrialRecord.of(study.trials[2])
    assert unusable.stop_reason == "invalid_config" and "gone.txt" in unusable.fail_reason
    assert tracker.ends == [
        ("pruned", ""),
        ("pruned", "diverged"),
        ("failed", "invalid_config"),
        ("complete", ""),
    ]
