"""Many workers on one study in the real PostgreSQL server (127.0.0.1:5432): joining, a worker
killed with SIGKILL mid-trial, and every command reading the same database."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter

import optuna
import psycopg
import pytest
from optuna.trial import TrialState

from hpo.storage import open_storage

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture
def pg_url():
    """A database of its own for each test on the local server, dropped afterwards."""
    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN} ({e}); start it (see README)")
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def env(tmp_path, cache_dir):
    # short heartbeats so that a dead worker's trial is noticed in seconds, not minutes
    return {
        **os.environ,
        "HPO_RUNS_DIR": str(tmp_path / "runs"),
        "HPO_HEARTBEAT_S": "1",
        "HPO_GRACE_S": "6",
    }


def start(module, *args, env):
    quiet = ["--no-progress"] if module != "hpo.analyze" else []
    return subprocess.Popen(
        [sys.executable, "-m", module, *args, *quiet],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip


def finish(proc, timeout=400):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{proc.args} did not finish: {err[-3000:]}")
    return proc.returncode, out, err


def load(url, name="smoke"):
    return optuna.load_study(study_name=name, storage=open_storage(url))


def wait_for(condition, timeout=180, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


# A trial of this length spans several evaluations (checkpoints), so a kill lands mid-trial;
# no pruning, so every trial runs long enough to be caught.
LONG_TRIALS = [
    "--pruner",
    "none",
    "--set",
    "train.max_steps=150",
    "--set",
    "train.eval_interval=10",
]


@pytest.fixture(params=["postgresql", "sqlite"])
def fault_setup(request, tmp_path):
    """3 workers on PostgreSQL; 4 on the default SQLite file, with a dashboard reading it."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url"), 3, False
    return f"sqlite:///{tmp_path}/hpo.db", 4, True


def test_a_worker_killed_mid_trial_loses_nothing(fault_setup, env, tmp_path):
    url, n_workers, watch = fault_setup
    target = 2 * n_workers + 1
    first = start("hpo.run", "--study", "smoke", "--trials", str(target), "--storage", url, *LONG_TRIALS, env=env)  # fmt: skip
    wait_for(lambda: _study_exists(url), what="the study to be created")
    joiners = [start("hpo.worker", "--study", "smoke", "--storage", url, env=env) for _ in range(n_workers - 1)]  # fmt: skip
    victim = joiners[0]
    dashboard = _watch_with_dashboard(url, env) if watch else None

    def victims_trial_mid_way():
        for t in load(url).get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if (
                t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
                and len(t.intermediate_values) >= 2
            ):
                return t
        return None

    doomed = wait_for(victims_trial_mid_way, what="the victim to be mid-trial")
    done_before = {
        t.number: t.value for t in load(url).get_trials() if t.state == TrialState.COMPLETE
    }
    os.killpg(victim.pid, signal.SIGKILL)  # no handler runs: the trial is left RUNNING, silent
    victim.wait()
    errors = []
    for proc in (first, *joiners[1:]):
        code, _, err = finish(proc)
        assert code == 0, err[-3000:]
        errors.append(err)
    if dashboard is not None:
        assert dashboard() > 5  # the dashboard really read the study all along
    assert not any("database is locked" in err for err in errors)

    trials = load(url).get_trials()
    states = Counter(t.state for t in trials)
    assert sum(states[s] for s in COUNTED) == target  # exactly the target, nothing duplicated
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0
    dead = trials[doomed.number]
    assert dead.state == TrialState.FAIL
    assert (
        dead.user_attrs["stop_reason"] == "crashed"
        and "heartbeat" in dead.user_attrs["fail_reason"]
    )
    retries = [t for t in trials if t.user_attrs.get("retry_of") == doomed.number]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    # resumed from the dead trial's last checkpoint, not from step 0
    assert retry.user_attrs["resumed_from_step"] >= max(doomed.intermediate_values)
    assert set(dead.intermediate_values) <= set(retry.intermediate_values)
    assert max(retry.intermediate_values) == 150
    # no completed trial lost or changed; the only failed trial is the one that was killed
    after = {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
    assert done_before.items() <= after.items()
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [doomed.number]
    # the dead trial's checkpoint moved to its retry; nothing of it is left behind
    assert not (tmp_path / "runs" / "smoke" / "checkpoints" / f"trial_{doomed.number}").exists()


def _watch_with_dashboard(url, env):
    """optuna-dashboard polling the study as an open browser tab does; returns a stop function
    that gives the number of answers it got."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hpo.dashboard", "--storage", url, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    stop, polls = threading.Event(), [0]

    def watch():
        while not stop.is_set():
            if _get(f"http://127.0.0.1:{port}/api/studies/1?after=0"):
                polls[0] += 1
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()

    def done():
        stop.set()
        watcher.join()
        os.killpg(server.pid, signal.SIGKILL)
        return polls[0]

    return done


def _study_exists(url):
    try:
        return "hpo.target" in load(url).user_attrs
    except KeyError:
        return False


def test_every_command_works_on_postgres(pg_url, env, tmp_path):
    code, _, err = finish(start("hpo.run", "--study", "smoke", "--trials", "3", "--pruner", "none", "--storage", pg_url, env=env))  # fmt: skip
    assert code == 0, err[-3000:]
    # a worker joining a study that has reached its target has nothing to do
    code, _, err = finish(start("hpo.worker", "--study", "smoke", "--storage", pg_url, env=env))
    assert code == 0 and "3/3 trials done" in err, err[-3000:]

    code, out, err = finish(start("hpo.analyze", "--study", "smoke", "--storage", pg_url, "--resamples", "3", env=env))  # fmt: skip
    assert code == 0 and "# Analysis of smoke" in out, err[-3000:]

    code, out, err = finish(start("hpo.validate", "--study", "smoke", "--storage", pg_url, "--seeds", "2", env=env))  # fmt: skip
    assert code == 0, err[-3000:]
    assert "hpo.validate.report" in load(pg_url).user_attrs

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hpo.dashboard", "--storage", pg_url, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        body = wait_for(lambda: _get(f"http://127.0.0.1:{port}/api/studies"), what="the dashboard")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
    studies = json.loads(body)["study_summaries"]
    assert [s["study_name"] for s in studies] == ["smoke"]


def test_worker_refuses_clearly(pg_url, env):
    code, _, err = finish(start("hpo.worker", "--study", "nope", "--storage", pg_url, env=env))
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: no study 'nope'")
    optuna.create_study(study_name="bare", storage=open_storage(pg_url))
    code, _, err = finish(start("hpo.worker", "--study", "bare", "--storage", pg_url, env=env))
    assert code == 2 and "was not created by hpo.run" in err
    bad = "postgresql://postgres@127.0.0.1:1/nowhere"
    code, _, err = finish(start("hpo.worker", "--study", "smoke", "--storage", bad, env=env))
    assert code == 2 and "cannot open storage" in err and len(err.strip().splitlines()) == 1


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    try:
        return urllib.request.urlopen(url, timeout=5).read()
    except OSError:
        return None
