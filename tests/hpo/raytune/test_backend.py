"""hpo.run --backend ray end to end: a real local Ray (2 CPUs), real training, real SQLite.

Each test runs hpo.run in its own process session, so whatever happens, the finally clause can
end the Ray processes that run started (and no others).
"""

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.analysis.analyze import analyze
from hpo.record import TrialRecord
from hpo.validation.validate import configs_to_validate
from tests.helpers import (
    counted,
    finish,
    free_port,
    run_hpo,
    run_ray,
    sets,
    sqlite_url,
    start,
    trials_at,
    trials_so_far,
    wait_for,
)
from trainers import TrainConfig, score_checkpoint

pytestmark = pytest.mark.slow  # a local Ray cluster and real training

TINY = ["--set", "train.max_steps=30"]  # 3 evaluations: still prunable


@pytest.fixture
def env(ray_env):
    return ray_env


def test_six_trials_land_in_the_optuna_storage(tmp_path, env):
    err = run_ray(tmp_path, env, "--study", "smoke", "--trials", "6")
    ts = trials_at(tmp_path)
    states = Counter(t.state for t in ts)
    assert len(ts) == len(counted(ts)) == 6
    assert states[TrialState.PRUNED] >= 1 and states[TrialState.COMPLETE] >= 1  # ASHA at work
    for t in counted(ts):
        r = TrialRecord.of(t)  # the same typed record as the Optuna backend writes
        assert r.backend == "ray" and t.user_attrs["ray.trial_id"] and t.user_attrs["ray.node_id"]
        assert r.tokens_per_s > 0 and r.n_params > 0 and r.wall_time_s > 0
        assert r.manifest["config"]["train.max_steps"] == 60
        assert r.manifest["steps"] == r.steps and r.metrics["val/loss"] > 0
        assert r.tokens == r.steps * 8 * 32 and r.max_tokens == 60 * 8 * 32
        assert max(t.intermediate_values) == r.steps  # every evaluation, at its step
        assert sorted(t.intermediate_values) == list(range(10, r.steps + 1, 10))
        if t.state == TrialState.PRUNED:
            assert r.stop_reason == "pruned" and r.steps < r.max_steps
        else:
            assert r.stop_reason == "max_steps" and r.steps == 60
            assert t.value == min(t.intermediate_values.values())
            assert t.intermediate_values[r.best_step] == t.value
        if t.params.get("optim.name", "adamw") == "adamw":
            assert 0 < r.derived["optim.beta2"] < 1  # derived values, as the Optuna backend records
    best = min((t for t in ts if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert f"best: trial {best.number}" in err and "saved by pruning" in err
    assert "ray: start-up" in err
    # the best trial's checkpoint is kept where the Optuna backend keeps it; Ray's are gone
    root = tmp_path / "runs" / "smoke" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [f"trial_{best.number}"]
    assert not (tmp_path / "runs" / "ray" / "smoke").exists()

    # what validate and analyze read works on a Ray-run study
    study = optuna.load_study(study_name="smoke", storage=sqlite_url(tmp_path))
    configs = configs_to_validate(study, trial=None, top_k=1)
    cfg = configs[f"trial_{best.number}"]
    assert cfg == TrialRecord.of(best).manifest["config"]
    best_pt = root / f"trial_{best.number}" / "best.pt"
    scores = score_checkpoint(TrainConfig.from_dict(cfg), best_pt, split="val")
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
        # the first two trials start together, one per node (1 CPU each), and last long enough
        # that a finished trial's worker cannot take the other's before its worker is up
        long = sets("train.max_steps=2500", "train.eval_interval=100")
        args = ["--study", "smoke", "--trials", "4", "--scheduler", "fifo", *long]
        run_ray(tmp_path, env, *args, "--address", cluster.address)
    finally:
        cluster.shutdown()
    ts = trials_at(tmp_path)
    ends = [(t.state.name, TrialRecord.of(t).fail_reason) for t in ts]
    # (a long smoke trial may diverge at a high sampled lr: pruned, still a finished trial)
    assert len(ts) == len(counted(ts)) == 4, ends
    assert {t.user_attrs["ray.node_id"] for t in ts} == nodes  # each node ran trials
    assert all(t.user_attrs["ray.experiment"] == "smoke" for t in ts)


def test_a_crashed_trial_is_retried_and_an_interrupted_run_restored(tmp_path, env):
    # one trial at a time, long enough to be caught mid-way
    one_at_a_time = ["--scheduler", "fifo", "--max-concurrent", "1"]
    args = ["--study", "smoke", "--trials", "2", *one_at_a_time, *sets("train.max_steps=400")]
    proc = start("hpo.run", "--storage", sqlite_url(tmp_path), "--backend", "ray", *args, env=env)
    try:
        # kill the worker process of trial 0 after it has checkpointed a few evaluations
        first = wait_for(
            lambda: [
                t
                for t in trials_so_far(tmp_path)
                if len(t.intermediate_values) >= 3 and t.user_attrs.get("ray.pid")
            ]
        )[0]
        os.kill(first.user_attrs["ray.pid"], signal.SIGKILL)
        # then interrupt the whole run while trial 1 is under way
        wait_for(
            lambda: [
                t
                for t in trials_so_far(tmp_path)
                if t.number == 1 and len(t.intermediate_values) >= 3
            ]
        )
        proc.send_signal(signal.SIGINT)
        code, _, err = finish(proc)
    finally:
        if proc.poll() is None:
            finish(proc, timeout=60)
    assert code == 130, err[-4000:]
    assert "rerun the same command to restore the Ray experiment" in err
    ts = trials_at(tmp_path)
    retried = ts[0]
    assert retried.state == TrialState.COMPLETE and TrialRecord.of(retried).steps == 400
    (at,) = retried.user_attrs["ray.resumed_at"]  # from its checkpoint, not from scratch
    assert at >= 30 and at % 10 == 0
    assert sorted(retried.intermediate_values) == list(range(10, 401, 10))
    assert ts[1].state == TrialState.RUNNING  # left for the restore
    interrupted_at = max(ts[1].intermediate_values)

    err = run_ray(tmp_path, env, *args)
    assert "restoring the interrupted Ray experiment" in err
    ts = trials_at(tmp_path)
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
            "error: --set optim.lr is set by the search space 'optimizer' in every trial",
        ),
        (["--cpus-per-trial", "0"], "error: --cpus-per-trial must be positive"),
        (["--gpus-per-trial", "1"], "error: no node of the Ray cluster has 1 CPU and 1 GPU"),
        (["--trials-per-gpu", "2"], "error: no node of the Ray cluster has 1 CPU and 0.5 GPU"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_stored(tmp_path, env, args, message):
    err = run_ray(tmp_path, env, "--study", "smoke", *args, expect=2)
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "hpo.db").exists()


def test_ray_flags_need_the_ray_backend(tmp_path, env):
    out = run_hpo(tmp_path, "--study", "smoke", "--scheduler", "asha", env=env, check=False)
    assert out.returncode == 2 and out.stderr == "error: --scheduler needs --backend ray\n"


# A one-node cluster in a process of its own (a fresh Ray configuration: the test process's
# Ray reads RAY_AUTH_MODE once); it prints its node's id and ends when its stdin closes.
HEAD_NODE = """
import sys
from ray.cluster_utils import Cluster

cluster = Cluster(
    initialize_head=True,
    head_node_args={
        "num_cpus": 2, "include_dashboard": False, "ray_client_server_port": int(sys.argv[1])
    },
)
cluster.wait_for_nodes()
print(*(n.node_id for n in cluster.list_all_nodes()), flush=True)
sys.stdin.read()
cluster.shutdown()
"""


def client_server_logs(ray_tmp: str) -> str:
    """The head's Ray Client logs: the per-client servers' own (ray_client_server_PORT.err, where
    a server that did not start says why) in full, then the end of the proxy's."""
    logs = sorted(Path(ray_tmp).glob("**/logs/ray_client_server*.*"))
    own = [p for p in logs if p.stem != "ray_client_server"]
    proxy = [p for p in logs if p.stem == "ray_client_server"]
    return "".join(f"\n--- {p.name}\n{p.read_text()[-4000:]}" for p in own) + "".join(
        f"\n--- {p.name}\n{p.read_text()[-1500:]}" for p in proxy
    )


def test_a_ray_client_address_runs_the_study_on_that_cluster(tmp_path, env):
    """--address ray://HOST:PORT: Ray Client, the driver runs on the cluster."""
    port = free_port()
    # token authentication, as Ray 2.60 starts local clusters, with a token of the test's own
    # (not ~/.ray/auth_token, which exists only if an earlier Ray run here wrote one). The head's
    # client proxy starts a server process per client and gives it 30 s by default, which a
    # busy 2-core machine can miss.
    cluster_env = {
        **env,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": uuid.uuid4().hex,
        "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "180",
    }
    head = subprocess.Popen(
        [sys.executable, "-c", HEAD_NODE, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=cluster_env,
        start_new_session=True,
    )
    try:
        head_ids = set(head.stdout.readline().split())
        assert head_ids, "the head node did not start"
        address = ["--address", f"ray://127.0.0.1:{port}"]
        args = ["--storage", sqlite_url(tmp_path), "--backend", "ray", "--study", "smoke"]
        code, _, err = finish(
            start("hpo.run", *args, "--trials", "3", *address, *TINY, env=cluster_env)
        )
        assert code == 0, err[-2000:] + client_server_logs(env["RAY_TMPDIR"])
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
    ts = trials_at(tmp_path)
    assert len(counted(ts)) == 3
    assert {t.user_attrs["ray.node_id"] for t in ts} <= head_ids
