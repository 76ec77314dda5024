"""hpo.run end to end, as a user runs it: a real subprocess, real training, real SQLite."""

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpo.record import TrialRecord
from tests.helpers import (
    SMOKE_FAST,
    command,
    counted,
    run_hpo,
    sets,
    sqlite_url,
    start,
    trials_at,
    trials_so_far,
    wait_for,
)

RETRIES = optuna.storages.RetryHeartbeatStaleTrialCallback  # what a queued retry retries


@pytest.mark.slow  # real studies trained end to end
def test_smoke_study_end_to_end(tmp_path, cache_dir):
    out = run_hpo(tmp_path, "--study", "smoke", "--trials", "9")
    ts = trials_at(tmp_path)
    states = Counter(t.state for t in ts)
    assert len(counted(ts)) == 9 and states[TrialState.RUNNING] == 0
    assert states[TrialState.PRUNED] >= 1  # Hyperband is at work
    assert states[TrialState.COMPLETE] >= 1
    pruned = [t for t in ts if t.state == TrialState.PRUNED]
    assert all(TrialRecord.of(t).steps < TrialRecord.of(t).max_steps for t in pruned)
    best = min((t for t in ts if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert best.value == min(best.intermediate_values.values())  # the value is the best evaluation
    assert "saved by pruning" in out.stderr and f"best: trial {best.number}" in out.stderr
    # every trial records what it ran on and how fast
    for t in counted(ts):
        assert TrialRecord.of(t).tokens_per_s > 0 and TrialRecord.of(t).n_params > 0
        m = TrialRecord.of(t).manifest
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
        assert len(m["data"]["fingerprint"]) == 16 and m["config"]["train.max_steps"] == 60
        if t.params.get("optim.name", "adamw") == "adamw":
            assert 0 < TrialRecord.of(t).derived["optim.beta2"] < 1  # derived value recorded
    # only the best trial's checkpoint is kept, for validation
    kept = sorted(p.name for p in (tmp_path / "runs" / "smoke" / "checkpoints").iterdir())
    assert kept == [f"trial_{best.number}"]
    assert (tmp_path / "runs" / "smoke" / "checkpoints" / kept[0] / "best.pt").exists()


@pytest.mark.slow  # real studies trained end to end
def test_rerun_tops_up_to_the_total(tmp_path, cache_dir):
    run_hpo(tmp_path, "--study", "smoke", "--trials", "3", *SMOKE_FAST)
    first = {t.number: t.params for t in trials_at(tmp_path)}
    assert len(first) == 3
    out = run_hpo(tmp_path, "--study", "smoke", "--trials", "6", *SMOKE_FAST)
    assert "3/6 trials done" in out.stderr
    ts = trials_at(tmp_path)
    assert len(counted(ts)) == 6 and [t.number for t in ts] == list(range(6))
    assert {t.number: t.params for t in ts if t.number < 3} == first  # nothing lost
    new_params = [t.params for t in ts if t.number >= 3]
    assert all(p not in first.values() for p in new_params)  # a resumed sampler does not replay
    again = run_hpo(tmp_path, "--study", "smoke", "--trials", "6", *SMOKE_FAST)
    assert len(trials_at(tmp_path)) == 6 and "6/6 trials done" in again.stderr


@pytest.mark.slow  # real studies trained end to end
def test_parallel_workers_reach_exactly_the_target(tmp_path, cache_dir):
    run_hpo(tmp_path, "--study", "smoke", "--trials", "8", "--workers", "3", *SMOKE_FAST)
    ts = trials_at(tmp_path)
    assert len(counted(ts)) == 8
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    failed = [t for t in ts if t.state == TrialState.FAIL]
    assert all(TrialRecord.of(t).stop_reason == "surplus" for t in failed)


@pytest.mark.slow  # real studies trained end to end
def test_default_study_runs_its_full_space(tmp_path, cache_dir):
    small = sets(
        "train.max_steps=20",
        "train.eval_interval=10",
        "data.max_chars=200000",
        "model.n_layer=1",
        "model.n_embd=32",
    )
    run_hpo(tmp_path, "--trials", "2", *small)
    ts = trials_at(tmp_path, "lr_sweep")
    assert len(counted(ts)) == 2 and "schedule.name" in ts[0].params
    assert {"optim.lr", "optim.sgd_lr"} & set(ts[0].params)  # the family's own lr range


@pytest.mark.slow  # real studies trained end to end
def test_diverging_trials_are_pruned_with_a_bad_value_and_a_hopeless_study_stops(
    tmp_path, cache_dir
):
    # adam at lr 20-100: the loss blows up to finite values far above a uniform guess's
    spec = tmp_path / "diverge.yaml"
    spec.write_text(
        "description: every trial diverges\n"
        "search_space: {optimizer: {lr: [20, 100], names: [adamw], weight_decay: null}}\n"
        "trainer: {data.max_chars: 200000, model.n_layer: 1, model.n_embd: 32,"
        " schedule.warmup_frac: 0, train.max_steps: 40, train.eval_interval: 10}\n"
    )
    out = run_hpo(tmp_path, "--study", str(spec), "--trials", "20", check=False)
    assert out.returncode == 1
    assert "the last 5 trials all failed or diverged (training diverged: loss is" in out.stderr
    ts = trials_at(tmp_path, "diverge")
    assert len(ts) == 5 and all(t.state == TrialState.PRUNED for t in ts)
    for t in ts:
        assert TrialRecord.of(t).stop_reason == "diverged"
        # finite, but past the divergence limit: twice the loss of a uniform guess
        limit = float(re.search(r"above ([\d.]+)", TrialRecord.of(t).fail_reason).group(1))
        # the sampler sees that limit, worse than any healthy run's value, where it blew up
        assert t.intermediate_values == {TrialRecord.of(t).steps: pytest.approx(limit, rel=1e-2)}
    assert out.stderr.count("Traceback") == 0


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
            ["--study", "smoke", "--stop-below-noise"],
            "error: --stop-below-noise: noise.stop_below_noise needs noise.seeds of 2 or more",
        ),
        (
            ["--study", "smoke", "--noise-seeds", "-1"],
            "error: --noise-seeds: Input should be greater than or equal to 0",
        ),
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
    env = {
        **os.environ,
        "HPO_RUNS_DIR": str(tmp_path / "runs"),
        "HPO_STORAGE": sqlite_url(tmp_path),
    }
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


@pytest.mark.slow  # real studies trained end to end
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
    cmd = command("hpo.run", "--storage", sqlite_url(tmp_path), "--workers", str(workers))
    # its own session, so that whatever happens here, the finally below can end all its workers
    proc = subprocess.Popen(
        [*cmd, *long_trials],
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
            if sum(t.state == TrialState.RUNNING for t in trials_so_far(tmp_path)) == workers:
                break
        time.sleep(3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert "rerun the same command to continue" in err
    # said once, and true: no worker is reported as stopping uncleanly next to it
    assert "instead of stopping cleanly" not in err, err[-3000:]
    ts = trials_at(tmp_path)
    assert not [t.number for t in ts if t.state == TrialState.RUNNING], err[-3000:]
    interrupted = [t for t in ts if t.state == TrialState.FAIL]
    reasons = [TrialRecord.of(t).stop_reason for t in interrupted]
    assert reasons == ["interrupted"] * workers, err[-3000:]
    # each is queued to go on where it was
    waiting = [t for t in ts if t.state == TrialState.WAITING]
    assert sorted(RETRIES.retry_history(t)[-1] for t in waiting) == [t.number for t in interrupted]
    run_hpo(tmp_path, "--study", "smoke", "--trials", "4", *SMOKE_FAST)
    assert len(counted(trials_at(tmp_path))) == 4


@pytest.mark.slow  # worker processes, one killed
def test_a_killed_worker_process_is_said_once_and_the_others_reach_the_target(tmp_path, cache_dir):
    """kill -9 of one of hpo.run's worker processes: the others take its trial over (after
    the grace period), the study reaches its target, and the run says what happened in one
    line and exits 0: no "rerun the same command", no leaked-semaphore warning."""
    env = {
        **os.environ,
        "HPO_RUNS_DIR": str(tmp_path / "runs"),
        "HPO_HEARTBEAT_S": "1",
        "HPO_GRACE_S": "4",
    }
    args = ["--study", "smoke", "--trials", "4", "--workers", "2", "--pruner", "none"]
    proc = start(
        "hpo.run", "--storage", sqlite_url(tmp_path), *args, *sets("train.max_steps=200"), env=env
    )
    try:
        wait_for(
            lambda: (
                sum(
                    t.state == TrialState.RUNNING and len(t.intermediate_values) >= 2
                    for t in trials_so_far(tmp_path)
                )
                == 2
            ),
            what="both workers mid-trial",
        )
        (victim, *_) = _worker_pids(proc.pid)
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert err.count("was killed by SIGKILL") == 1, err[-3000:]
    assert "the other workers took its trials over" in err
    assert "rerun the same command" not in err and "leaked semaphore" not in err, err[-3000:]
    ts = trials_at(tmp_path)
    assert len(counted(ts)) == 4
    assert [TrialRecord.of(t).stop_reason for t in ts if t.state == TrialState.FAIL] == ["crashed"]


def _worker_pids(parent: int) -> list[int]:
    """hpo.run's spawned worker processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [
        int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


@pytest.mark.slow  # a study trained, interrupted and rerun
def test_an_interrupted_trial_goes_on_from_its_last_checkpoint(tmp_path, cache_dir):
    """Ctrl-C on a long trial, then the same command again: the trial is not thrown away but
    continued from the step of its last checkpoint, as a crashed trial's retry is."""
    args = ["--study", "smoke", "--trials", "1", "--pruner", "none", *sets("train.max_steps=400")]
    env = {**os.environ, "HPO_RUNS_DIR": str(tmp_path / "runs")}
    proc = start("hpo.run", "--storage", sqlite_url(tmp_path), *args, env=env)
    try:
        wait_for(
            lambda: any(len(t.intermediate_values) >= 5 for t in trials_so_far(tmp_path)),
            what="five evaluations",
        )
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    (stopped,) = trials_at(tmp_path)[:1]
    assert TrialRecord.of(stopped).stop_reason == "interrupted"
    folder = tmp_path / "runs" / "smoke" / "checkpoints" / f"trial_{stopped.number}"
    saved = torch.load(folder / "last.pt", weights_only=True)["step"]
    assert saved >= 50

    out = run_hpo(tmp_path, *args)
    ts = trials_at(tmp_path)
    (again,) = [t for t in ts if TrialRecord.of(t).retry_of == stopped.number]
    record = TrialRecord.of(again)
    assert again.state == TrialState.COMPLETE and again.params == stopped.params
    assert record.resumed_from_step == saved and record.steps == 400
    assert set(stopped.intermediate_values) <= set(again.intermediate_values)
    assert len(counted(ts)) == 1, out.stderr  # the total: the continued trial is the one
