"""Population-based training on Ray (studies/pbt.yaml): exploit copies weights, explore perturbs.

A population of 4 tiny models, 60 steps, a perturbation every 20 steps, on a local 2-CPU Ray.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import optuna
import pytest
from optuna.trial import TrialState

TINY = [f"--set={kv}" for kv in (
    "data.max_chars=300000", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
    "model.block_size=32", "train.batch_size=8", "train.max_steps=60", "train.eval_interval=10",
    "train.eval_batches=2",
)]  # fmt: skip


@pytest.fixture
def env(tmp_path, cache_dir):
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # unix socket paths: at most 107 bytes
    yield {**os.environ, "HPO_RUNS_DIR": str(tmp_path / "runs"), "RAY_TMPDIR": ray_tmp}
    shutil.rmtree(ray_tmp, ignore_errors=True)


def run_ray(tmp_path, env, *args):
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo.run", "--storage", f"sqlite:///{tmp_path}/hpo.db",
         "--no-progress", "--backend", "ray", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=500)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the local Ray this run started, if left
    assert proc.returncode == 0, err[-4000:]
    return optuna.load_study(study_name="pbt", storage=f"sqlite:///{tmp_path}/hpo.db")


def test_pbt_exploits_copy_weights_and_the_population_improves(tmp_path, env):
    study = run_ray(tmp_path, env, "--study", "pbt", *TINY)
    ts = study.get_trials()
    assert len(ts) == 4 and all(t.state == TrialState.COMPLETE for t in ts)
    assert all(t.user_attrs["steps"] == 60 for t in ts)

    events = [(t, e) for t in ts for e in t.user_attrs.get("pbt.lineage", [])]
    assert events, "no member was ever exploited"
    for t, e in events:
        donor = ts[e["donor"]]
        assert donor.number != t.number
        assert e["donor_value"] == donor.intermediate_values[e["step"]]  # what the donor reported
        if e["step_after"] is not None:  # else exploited at the last step: nothing left to do
            assert e["step_after"] == e["step"] + 10  # it went on from the donor's step
        # explore: the member's schedule changes where it took the donor's state
        assert e["step"] in [row["step"] for row in t.user_attrs["pbt.schedule"]]
    # exploit copied weights: where a member was clearly behind its donor, its next evaluation
    # jumps to the donor's level instead of going on from its own
    clear = [e for _, e in events if e["own_value"] - e["donor_value"] > 0.1 and e["value_after"]]
    assert clear, f"no exploit with a clear gap: {[e for _, e in events]}"
    for e in clear:
        gap = e["own_value"] - e["donor_value"]
        assert abs(e["value_after"] - e["donor_value"]) < 0.5 * gap, e

    for t in ts:  # each member's hyperparameter schedule starts from its sampled values
        first = t.user_attrs["pbt.schedule"][0]
        assert first["step"] == 0 and first["optim.lr"] == pytest.approx(t.params["optim.lr"])
        assert first["model.dropout"] == pytest.approx(t.params["model.dropout"])
        for row in t.user_attrs["pbt.schedule"]:
            assert 1e-4 <= row["optim.lr"] <= 1e-2 and 0 <= row["model.dropout"] <= 0.3
    # the population ends better than it started
    start = min(t.intermediate_values[10] for t in ts)
    assert min(t.value for t in ts) < start - 0.3


def test_pb2_exploits_and_chooses_new_values_within_the_bounds(tmp_path, env):
    study = run_ray(tmp_path, env, "--study", "pbt", "--scheduler", "pb2", *TINY)
    ts = study.get_trials()
    assert len(ts) == 4 and all(t.state == TrialState.COMPLETE for t in ts)
    events = [(t, e) for t in ts for e in t.user_attrs.get("pbt.lineage", [])]
    assert events, "no member was ever exploited"
    for t, e in events:
        rows = {row["step"]: row for row in t.user_attrs["pbt.schedule"]}
        assert e["step"] in rows  # PB2's bandit picked the values it goes on with
        new = rows[e["step"]]
        assert 1e-4 <= new["optim.lr"] <= 1e-2 and 0 <= new["model.dropout"] <= 0.3
    start = min(t.intermediate_values[10] for t in ts)
    assert min(t.value for t in ts) < start - 0.3
