"""A full disk: one line saying where and how much, the trial recorded disk_full and continued
from its last checkpoint once there is room, and a study's checkpoints kept to what can still
win (the best, the running trials, the retries), so that it does not fill the disk again."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import trainers.checkpoint
from hpo.errors import StudyFailedError
from hpo.record import TrialRecord
from hpo.session import RunRequest, load_request, open_study, run_study
from tests.helpers import (
    counted,
    here,
    run_hpo,
    sets,
    sqlite_url,
    start,
    trials_at,
    trials_so_far,
    wait_for,
)

RETRIES = optuna.storages.RetryHeartbeatStaleTrialCallback


def test_a_full_disk_stops_the_run_and_the_trial_goes_on_once_there_is_room(
    tmp_path, monkeypatch, cache_dir
):
    """The checkpoint writer fails with ENOSPC from its fifth write on (in this process)."""
    monkeypatch.setenv("HPO_RUNS_DIR", str(tmp_path / "runs"))
    save, writes = torch.save, []

    def filling_up(obj, f, *args, **kwargs):
        writes.append(f)
        if len(writes) > 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(trainers.checkpoint.torch, "save", filling_up)
    request = RunRequest(
        study="smoke",
        trials=2,
        pruner="none",
        sets=("train.max_steps=60",),
        storage=sqlite_url(tmp_path),
    )
    study, plan = open_study(request, load_request(request))
    with pytest.raises(StudyFailedError) as stopped:
        run_study(study, plan, progress=False)
    message = str(stopped.value)
    assert message.startswith(f"no space left for a checkpoint in {tmp_path / 'runs'}")
    assert "MiB free, about" in message and "goes on from its last checkpoint" in message
    (full,) = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert TrialRecord.of(full).stop_reason == "disk_full"
    (waiting,) = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert RETRIES.retry_history(waiting)[-1] == full.number
    # the GPT saves before it reports: the last report's checkpoint is intact
    saved = max(full.intermediate_values)

    monkeypatch.setattr(trainers.checkpoint.torch, "save", save)  # room again
    study, plan = open_study(request, load_request(request))
    assert run_study(study, plan, progress=False) == 0
    trials = study.get_trials()
    assert len(counted(trials)) == 2
    (again,) = [t for t in trials if TrialRecord.of(t).retry_of == full.number]
    assert TrialRecord.of(again).resumed_from_step == saved > 0


def test_checkpoints_of_trials_that_cannot_win_go_as_the_study_goes(tmp_path, cache_dir, capsys):
    args = ["--study", "smoke", "--trials", "6", *sets("train.max_steps=20")]
    out = here(
        "hpo.run", "--storage", sqlite_url(tmp_path), *args, runs=tmp_path / "runs", capsys=capsys
    )
    best = optuna.load_study(study_name="smoke", storage=sqlite_url(tmp_path)).best_trial
    kept = sorted(p.name for p in (tmp_path / "runs" / "smoke" / "checkpoints").iterdir())
    assert kept == [f"trial_{best.number}"], out.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, mounted here (the tests run as root, as CI does)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    assert done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr!r}"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow  # a study on a real, small disk filled under it, then rerun
def test_a_disk_filled_mid_study_is_one_line_and_the_rerun_reaches_the_target(
    tmp_path, small_disk, cache_dir
):
    env = {**os.environ, "HPO_RUNS_DIR": str(small_disk / "runs")}
    args = ["--study", "smoke", "--trials", "3", "--pruner", "none", *sets("train.max_steps=400")]
    proc = start("hpo.run", "--storage", sqlite_url(tmp_path), *args, env=env)
    ballast = small_disk / "ballast"
    try:
        wait_for(
            lambda: any(len(t.intermediate_values) >= 3 for t in trials_so_far(tmp_path)),
            what="three evaluations",
        )
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        ballast.write_bytes(b"\0" * (free - 16 * 1024))  # the disk is full
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert last.startswith(f"error: no space left for a checkpoint in {small_disk}"), last
    full = [t for t in trials_at(tmp_path) if TrialRecord.of(t).stop_reason == "disk_full"]
    assert len(full) == 1

    ballast.unlink()  # room again: the same command goes on
    run_hpo(tmp_path, *args, env=env)
    trials = trials_at(tmp_path)
    assert len(counted(trials)) == 3
    (again,) = [t for t in trials if TrialRecord.of(t).retry_of == full[0].number]
    assert again.state == TrialState.COMPLETE and TrialRecord.of(again).resumed_from_step > 0
    kept = list(Path(small_disk / "runs" / "smoke" / "checkpoints").iterdir())
    assert len(kept) == 1  # the best trial's
