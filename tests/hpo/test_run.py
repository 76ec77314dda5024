"""hpo.run end to end, as a user runs it: a real subprocess, real training, real SQLite."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
import torch
from optuna.trial import TrialState

SMOKE_FAST = ["--set", "train.max_steps=30"]  # 3 evaluations: still prunable, twice as fast


def run_hpo(tmp_path, *args, check=True, timeout=300):
    env = {**os.environ, "HPO_RUNS_DIR": str(tmp_path / "runs")}
    out = subprocess.run(
        [sys.executable, "-m", "hpo.run", "--storage", storage(tmp_path), "--no-progress", *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def storage(tmp_path):
    return f"sqlite:///{tmp_path}/hpo.db"


def trials(tmp_path, name="smoke"):
    return optuna.load_study(study_name=name, storage=storage(tmp_path)).get_trials()


def counted(ts):
    return [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_smoke_study_end_to_end(tmp_path, cache_dir):
    out = run_hpo(tmp_path, "--study", "smoke", "--trials", "9")
    ts = trials(tmp_path)
    states = Counter(t.state for t in ts)
    assert len(counted(ts)) == 9 and states[TrialState.RUNNING] == 0
    assert states[TrialState.PRUNED] >= 1  # Hyperband is at work
    assert states[TrialState.COMPLETE] >= 1
    pruned = [t for t in ts if t.state == TrialState.PRUNED]
    assert all(t.user_attrs["steps"] < t.user_attrs["max_steps"] for t in pruned)
    best = min((t for t in ts if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert best.value == min(best.intermediate_values.values())  # the value is the best evaluation
    assert "saved by pruning" in out.stderr and f"best: trial {best.number}" in out.stderr
    # every trial records what it ran on and how fast
    for t in counted(ts):
        assert t.user_attrs["tokens_per_s"] > 0 and t.user_attrs["params"] > 0
        m = t.user_attrs["manifest"]
        assert set(m) >= {
            "git",
            "packages",
            "python",
            "device",
            "device_name",
            "data",
            "seeds",
            "config",
        }
        assert m["packages"]["torch"] == torch.__version__.split("+")[0] or m["packages"][
            "torch"
        ].startswith(torch.__version__.split("+")[0])
        assert len(m["data"]["fingerprint"]) == 16 and m["config"]["train"]["max_steps"] == 60
        if t.params.get("optim.name", "adamw") == "adamw":
            assert 0 < t.user_attrs["optim.beta2"] < 1  # derived value recorded
    # only the best trial's checkpoint is kept, for validation
    kept = sorted(p.name for p in (tmp_path / "runs" / "smoke" / "checkpoints").iterdir())
    assert kept == [f"trial_{best.number}"]
    assert (tmp_path / "runs" / "smoke" / "checkpoints" / kept[0] / "best.pt").exists()


def test_rerun_tops_up_to_the_total(tmp_path, cache_dir):
    run_hpo(tmp_path, "--study", "smoke", "--trials", "3", *SMOKE_FAST)
    first = {t.number: t.params for t in trials(tmp_path)}
    assert len(first) == 3
    out = run_hpo(tmp_path, "--study", "smoke", "--trials", "6", *SMOKE_FAST)
    assert "3/6 trials done" in out.stderr
    ts = trials(tmp_path)
    assert len(counted(ts)) == 6 and [t.number for t in ts] == list(range(6))
    assert {t.number: t.params for t in ts if t.number < 3} == first  # nothing lost
    new_params = [t.params for t in ts if t.number >= 3]
    assert all(p not in first.values() for p in new_params)  # a resumed sampler does not replay
    again = run_hpo(tmp_path, "--study", "smoke", "--trials", "6", *SMOKE_FAST)
    assert len(trials(tmp_path)) == 6 and "6/6 trials done" in again.stderr


def test_parallel_workers_reach_exactly_the_target(tmp_path, cache_dir):
    run_hpo(tmp_path, "--study", "smoke", "--trials", "8", "--workers", "3", *SMOKE_FAST)
    ts = trials(tmp_path)
    assert len(counted(ts)) == 8
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    failed = [t for t in ts if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("stop_reason") == "surplus" for t in failed)


def test_default_study_runs_its_full_space(tmp_path, cache_dir):
    run_hpo(
        tmp_path, "--trials", "2",
        "--set", "train.max_steps=20", "--set", "train.eval_interval=10", "--set", "data.max_chars=200000",
        "--set", "model.n_layer=1", "--set", "model.n_embd=32",
    )  # fmt: skip
    ts = trials(tmp_path, "lr_sweep")
    assert len(counted(ts)) == 2 and "optim.lr" in ts[0].params and "schedule.name" in ts[0].params


def test_diverging_trials_are_recorded_and_a_hopeless_study_stops(tmp_path, cache_dir):
    spec = tmp_path / "diverge.yaml"
    spec.write_text(
        "description: every trial diverges\n"
        "search_space: {optimizer: {lr: [1.0e10, 1.0e12], names: [sgd], weight_decay: null}}\n"
        "trainer: {data.max_chars: 200000, model.n_layer: 1, model.n_embd: 32, optim.grad_clip: 0,"
        " schedule.warmup_frac: 0, train.max_steps: 40, train.eval_interval: 10}\n"
    )
    out = run_hpo(tmp_path, "--study", str(spec), "--trials", "20", check=False)
    assert out.returncode == 1
    assert "the last 5 trials all failed (training diverged: loss is nan at step" in out.stderr
    ts = trials(tmp_path, "diverge")
    assert len(ts) == 5 and all(t.state == TrialState.FAIL for t in ts)
    assert all(t.user_attrs["stop_reason"] == "diverged" for t in ts)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--study", "nope"], "error: unknown study 'nope'; shipped studies:"),
        (
            ["--study", "smoke", "--set", "model.n_layr=2"],
            "error: --set: unknown config key 'model.n_layr'",
        ),
        (["--study", "smoke", "--workers", "0"], "error: --workers must be at least 1"),
        (
            ["--study", "smoke", "--storage", "not-a-url"],
            "error: storage 'not-a-url' is not a database URL",
        ),
        (
            ["--study", "smoke", "--storage", "postgresql://hpo@127.0.0.1:1/none"],
            "error: cannot open storage postgresql://hpo@127.0.0.1:1/none",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_stored(tmp_path, args, message):
    env = {**os.environ, "HPO_RUNS_DIR": str(tmp_path / "runs"), "HPO_STORAGE": storage(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "hpo.run", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.startswith(message), out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "hpo.db").exists()


def test_bad_yaml_file_is_refused(tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text("description: x\nsearch_space: {optimizer: {lr: [1.0e-2, 1.0e-4]}}\n")
    out = run_hpo(tmp_path, "--study", str(spec), check=False)
    assert out.returncode == 2 and "optimizer.lr: low must be below high" in out.stderr
    assert not (tmp_path / "hpo.db").exists()


@pytest.mark.parametrize(
    ("workers", "sig"), [(1, signal.SIGINT), (2, signal.SIGINT), (1, signal.SIGTERM)]
)
def test_ctrl_c_stops_cleanly_and_a_rerun_goes_on(tmp_path, cache_dir, workers, sig):
    long_trials = [
        "--study",
        "smoke",
        "--trials",
        "4",
        "--set",
        "train.max_steps=100000",
        "--pruner",
        "none",
    ]
    env = {**os.environ, "HPO_RUNS_DIR": str(tmp_path / "runs")}
    cmd = [
        sys.executable,
        "-m",
        "hpo.run",
        "--storage",
        storage(tmp_path),
        "--no-progress",
        "--workers",
        str(workers),
        *long_trials,
    ]
    # its own session, so that whatever happens here, the finally below can end all its workers
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until training is under way
            time.sleep(1)
            if (tmp_path / "hpo.db").exists():
                try:
                    if sum(t.state == TrialState.RUNNING for t in trials(tmp_path)) == workers:
                        break
                except Exception:  # the study (or its schema) is still being created
                    pass
        time.sleep(3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert "rerun the same command to continue" in err
    ts = trials(tmp_path)
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    interrupted = [t for t in ts if t.state == TrialState.FAIL]
    assert len(interrupted) == workers and all(
        t.user_attrs["stop_reason"] == "interrupted" for t in interrupted
    )
    run_hpo(tmp_path, "--study", "smoke", "--trials", "4", *SMOKE_FAST)
    assert len(counted(trials(tmp_path))) == 4
