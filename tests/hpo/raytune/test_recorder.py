"""The Ray driver's side of the storage, without a cluster: heartbeats of the trials it holds."""

import time

import optuna
from optuna.trial import TrialState

from hpo.raytune import recorder
from hpo.raytune.recorder import Driver
from hpo.raytune.search import _start_attrs
from hpo.storage import Storage


def test_a_trial_waiting_for_its_ray_slot_is_not_taken_for_crashed(tmp_path, monkeypatch):
    # asked for by the searcher (PBT: the whole population up front), a trial can wait long for
    # a slot; a driver that beat only started trials let it go stale, and the next worker's
    # check failed it and queued a retry while Ray went on to train it
    monkeypatch.setattr(recorder, "HEARTBEAT_INTERVAL_S", 0.2)
    # a grace of several beats, as in use: a loaded machine may stall a beat for a second
    storage = Storage(f"sqlite:///{tmp_path}/hpo.db", heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(study_name="s", storage=storage)
    driver = Driver(
        study,
        metric="val/loss",
        direction="minimize",
        experiment="s",
        checkpoint_root=tmp_path,
        keep_all=False,
        progress=None,
        mutations=(),
    )
    waiting = study.ask()
    _start_attrs(waiting, {}, "s")  # as the searcher asks for a trial
    gone = study.ask()
    _start_attrs(gone, {}, "another")  # another driver's, which died

    until = time.monotonic() + 4  # longer than the grace period
    while time.monotonic() < until:
        driver.heartbeat()  # Tune's loop calls it after each of its steps
        time.sleep(0.05)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[waiting.number].state == TrialState.RUNNING
    assert study.trials[gone.number].state == TrialState.FAIL
