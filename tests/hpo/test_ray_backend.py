"""hpo.run --backend ray end to end: a real local Ray (2 CPUs), real training, real SQLite.

Each test runs hpo.run in its own process session, so whatever happens, the finally clause can
end the Ray processes that run started (and no others).
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.analyze import analyze
from hpo.validate import configs_to_validate
from trainers import TrainConfig, score_checkpoint

TINY = ["--set", "train.max_steps=30"]  # 3 evaluations: still prunable


@pytest.fixture
def env(tmp_path, cache_dir):
    """Runs dir, database and a short Ray temp dir (unix socket paths are capped at 107 bytes)."""
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    yield {**os.environ, "HPO_RUNS_DIR": str(tmp_path / "runs"), "RAY_TMPDIR": ray_tmp}
    shutil.rmtree(ray_tmp, ignore_errors=True)


def storage(tmp_path):
    return f"sqlite:///{tmp_path}/hpo.db"


def start(tmp_path, env, *args):
    cmd = [sys.executable, "-m", "hpo.run", "--storage", storage(tmp_path), "--no-progress",
           "--backend", "ray", *args]  # fmt: skip
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip


def finish(proc, timeout=400):
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the local Ray it started, if anything is left
    return proc.returncode, err


def run_ray(tmp_path, env, *args, expect=0):
    code, err = finish(start(tmp_path, env, *args))
    assert code == expect, err[-4000:]
    return err


def trials(tmp_path, name="smoke"):
    return optuna.load_study(study_name=name, storage=storage(tmp_path)).get_trials()


def counted(ts):
    return [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_six_trials_land_in_the_optuna_storage(tmp_path, env):
    err = run_ray(tmp_path, env, "--study", "smoke", "--trials", "6")
    ts = trials(tmp_path)
    states = Counter(t.state for t in ts)
    assert len(ts) == len(counted(ts)) == 6
    assert states[TrialState.PRUNED] >= 1 and states[TrialState.COMPLETE] >= 1  # ASHA at work
    for t in counted(ts):
        a = t.user_attrs
        assert a["backend"] == "ray" and a["ray.trial_id"] and a["ray.node_id"]
        assert a["tokens_per_s"] > 0 and a["params"] > 0 and a["wall_time_s"] > 0
        assert a["manifest"]["config"]["train"]["max_steps"] == 60
        assert a["manifest"].get("steps", a["steps"]) == a["steps"] and a["metrics"]["val/loss"] > 0
        assert max(t.intermediate_values) == a["steps"]  # every evaluation, at its step
        assert sorted(t.intermediate_values) == list(range(10, a["steps"] + 1, 10))
        if t.state == TrialState.PRUNED:
            assert a["stop_reason"] == "pruned" and a["steps"] < a["max_steps"]
        else:
            assert a["stop_reason"] == "max_steps" and a["steps"] == 60
            assert t.value == min(t.intermediate_values.values())
            assert t.intermediate_values[a["best_step"]] == t.value
        if t.params.get("optim.name", "adamw") == "adamw":
            assert 0 < a["optim.beta2"] < 1  # derived values, as the Optuna backend records
    best = min((t for t in ts if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert f"best: trial {best.number}" in err and "saved by pruning" in err
    assert "ray: start-up" in err
    # the best trial's checkpoint is kept where the Optuna backend keeps it; Ray's are gone
    root = tmp_path / "runs" / "smoke" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [f"trial_{best.number}"]
    assert not (tmp_path / "runs" / "ray" / "smoke").exists()

    # what validate and analyze read works on a Ray-run study
    study = optuna.load_study(study_name="smoke", storage=storage(tmp_path))
    configs = configs_to_validate(study, trial=None, top_k=1)
    cfg = configs[f"trial_{best.number}"]
    assert cfg == TrainConfig.from_dict(best.user_attrs["manifest"]["config"])
    scores = score_checkpoint(cfg, root / f"trial_{best.number}" / "best.pt", split="val")
    assert abs(scores["val/loss"] - best.value) < 0.3  # the whole split vs 2 fixed batches
    result = analyze(study, resamples=2, out=tmp_path / "report")
    assert result["best"] and (tmp_path / "report" / "summary.md").exists()


def test_trials_run_on_both_nodes_of_a_two_node_cluster(tmp_path, env, monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_TMPDIR", env["RAY_TMPDIR"])
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        nodes = {n.node_id for n in cluster.list_all_nodes()}
        assert len(nodes) == 2
        # trials long enough that a finished trial's worker cannot take the next one before
        # the other node's worker is up: with 1 CPU per node, two at a time means both nodes
        run_ray(tmp_path, env, "--study", "smoke", "--trials", "4", "--address",
                cluster.address, "--scheduler", "fifo", "--set", "train.max_steps=1500",
                "--set", "train.eval_interval=100")  # fmt: skip
    finally:
        cluster.shutdown()
    ts = trials(tmp_path)
    assert len(ts) == 4 and all(t.state == TrialState.COMPLETE for t in ts)
    assert {t.user_attrs["ray.node_id"] for t in ts} == nodes  # each node ran trials
    assert all(t.user_attrs["ray.experiment"] == "smoke" for t in ts)


def wait_for(predicate, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            found = predicate()
        except Exception:  # the database is still being created
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError("timed out waiting")


def test_a_crashed_trial_is_retried_and_an_interrupted_run_restored(tmp_path, env):
    # one trial at a time, long enough to be caught mid-way
    args = ["--study", "smoke", "--trials", "2", "--scheduler", "fifo", "--max-concurrent", "1",
            "--set", "train.max_steps=400"]  # fmt: skip
    proc = start(tmp_path, env, *args)
    try:
        # kill the worker process of trial 0 after it has checkpointed a few evaluations
        first = wait_for(
            lambda: [
                t
                for t in trials(tmp_path)
                if len(t.intermediate_values) >= 3 and t.user_attrs.get("ray.pid")
            ]
        )[0]
        os.kill(first.user_attrs["ray.pid"], signal.SIGKILL)
        # then interrupt the whole run while trial 1 is under way
        wait_for(
            lambda: [
                t for t in trials(tmp_path) if t.number == 1 and len(t.intermediate_values) >= 3
            ]
        )
        proc.send_signal(signal.SIGINT)
        code, err = finish(proc)
    finally:
        finish(proc, timeout=60) if proc.poll() is None else None
    assert code == 130, err[-4000:]
    assert "rerun the same command to restore the Ray experiment" in err
    ts = trials(tmp_path)
    retried = ts[0]
    assert retried.state == TrialState.COMPLETE and retried.user_attrs["steps"] == 400
    (at,) = retried.user_attrs["ray.resumed_at"]  # from its checkpoint, not from scratch
    assert at >= 30 and at % 10 == 0
    assert sorted(retried.intermediate_values) == list(range(10, 401, 10))
    assert ts[1].state == TrialState.RUNNING  # left for the restore
    interrupted_at = max(ts[1].intermediate_values)

    err = run_ray(tmp_path, env, *args)
    assert "restoring the interrupted Ray experiment" in err
    ts = trials(tmp_path)
    assert len(ts) == 2 and all(t.state == TrialState.COMPLETE for t in ts)
    resumed = ts[1].user_attrs["ray.resumed_at"]
    assert len(resumed) == 1 and 10 <= resumed[0] <= interrupted_at
    assert sorted(ts[1].intermediate_values) == list(range(10, 401, 10))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "127.0.0.1:1"], "error: cannot reach the Ray cluster at 127.0.0.1:1"),
        (["--workers", "2"], "error: --workers is for the Optuna backend"),
        (["--scheduler", "asha", "--pruner", "sha"], "error: --pruner and --scheduler both"),
        (
            ["--scheduler", "pbt", "--set", "optim.lr=1e-3"],
            "error: --scheduler pbt perturbs optim.lr, which --set fixes",
        ),
        (["--cpus-per-trial", "0"], "error: --cpus-per-trial must be positive"),
        (["--gpus-per-trial", "1"], "error: no node of the Ray cluster has 1 CPU and 1 GPU"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_stored(tmp_path, env, args, message):
    code, err = finish(start(tmp_path, env, "--study", "smoke", *args), timeout=120)
    assert code == 2 and err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "hpo.db").exists()


def test_ray_flags_need_the_ray_backend(tmp_path, env):
    out = subprocess.run(
        [sys.executable, "-m", "hpo.run", "--storage", storage(tmp_path), "--study", "smoke",
         "--scheduler", "asha"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and out.stderr == "error: --scheduler needs --backend ray\n"


def test_a_ray_client_address_runs_the_study_on_that_cluster(tmp_path, env, monkeypatch):
    """--address ray://HOST:PORT: Ray Client, the driver runs on the cluster."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_TMPDIR", env["RAY_TMPDIR"])
    # the head's client proxy starts a server process per client and gives it 30 s by default,
    # which a busy 2-core machine can miss; the proxy inherits this from the test's environment
    monkeypatch.setenv("RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S", "180")
    port = _free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "ray_client_server_port": port},
    )
    try:
        cluster.wait_for_nodes()
        # the local cluster uses token authentication; the client must too
        client_env = {**env, "RAY_AUTH_MODE": "token"}
        code, err = finish(start(tmp_path, client_env, "--study", "smoke", "--trials", "3",
                                 "--address", f"ray://127.0.0.1:{port}", *TINY))  # fmt: skip
        logs = sorted(Path(env["RAY_TMPDIR"]).glob("**/logs/ray_client_server*.err"))
        assert code == 0, err[-3000:] + "".join(p.read_text()[-2000:] for p in logs)
        head = {n.node_id for n in cluster.list_all_nodes()}
    finally:
        cluster.shutdown()
    ts = trials(tmp_path)
    assert len(counted(ts)) == 3
    assert {t.user_attrs["ray.node_id"] for t in ts} <= head


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
