"""hpo.storage on SQLite: two workers asking at the same moment never take the same queued trial;
Ctrl-C inside a storage call never leaves the write lock held; the Optuna internals it relies on
are still what it was written against."""

import inspect
import multiprocessing
import os
import random
import signal
import sqlite3
import time

import optuna
import pytest
from optuna.trial import TrialState

import hpo.storage
from hpo import record as records
from hpo.objective import _record_interrupt
from hpo.storage import (
    fail_crashed_trials,
    open_storage,
    storage_of,
    trial_id,
    trial_id_by_number,
)

ROUNDS = 25


def _ask_in_step(url: str, barrier, taken) -> None:
    study = optuna.load_study(study_name="queue", storage=open_storage(url))
    for _ in range(ROUNDS):
        barrier.wait()  # both workers ask together
        taken.put(study.ask().number)


def test_two_workers_never_take_the_same_queued_trial(tmp_path):
    # Optuna reads a queued trial's state, then marks it running; without a transaction around
    # both, two workers asking at once took the same trial about one time in three, and the
    # second to finish it failed ("Cannot tell a COMPLETE trial")
    url = f"sqlite:///{tmp_path}/hpo.db"
    study = optuna.create_study(study_name="queue", storage=open_storage(url))
    for i in range(2 * ROUNDS):
        study.enqueue_trial({"x": float(i)})
    ctx = multiprocessing.get_context("spawn")
    barrier, taken = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_ask_in_step, args=(url, barrier, taken)) for _ in range(2)]
    for w in workers:
        w.start()
    numbers = [taken.get(timeout=120) for _ in range(2 * ROUNDS)]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert sorted(numbers) == list(range(2 * ROUNDS))  # each queued trial taken once


INTERRUPTS = 300


def _interrupt_storage_calls(path: str, seed: int, outcome) -> None:
    """Ctrl-C (SIGALRM raising KeyboardInterrupt) at random moments of a trial's reports and
    reads, each handled as a worker handles it; stops at the first write lock left behind."""
    study = optuna.create_study(study_name="ctrl-c", storage=open_storage(f"sqlite:///{path}"))
    signal.signal(signal.SIGALRM, signal.default_int_handler)
    rng = random.Random(seed)
    for i in range(INTERRUPTS):
        trial = study.ask()
        # repeats, in case the first lands where Python only prints it (a weakref callback)
        signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.0002, 0.01), 0.05)
        try:
            for step in range(10**6):
                trial.report(1.0, step)
                study._storage.get_trial(trial._trial_id)
        # an interrupt inside SQLAlchemy's own cleanup can surface as another exception
        except BaseException as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            _record_interrupt(trial, e)
            # as Optuna does, while the interrupt is being handled
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        other = sqlite3.connect(path, timeout=0.5, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        except sqlite3.OperationalError as e:
            outcome.put(f"interrupt {i} left the write lock held ({e})")
            return
        finally:
            other.close()
    outcome.put("ok")


@pytest.mark.slow  # 300 interrupts, each followed by a garbage collection: about 40 s
def test_ctrl_c_inside_a_storage_call_never_leaves_the_write_lock_held(tmp_path):
    # A KeyboardInterrupt inside a statement made SQLAlchemy close a connection SQLite kept open
    # (the traceback still held the statement), or return one to the pool mid-transaction; its
    # write lock then made every process, this one included, wait the 120-s lock timeout:
    # 1-2 times in 300 interrupts before. In a process of its own, since pytest-timeout has
    # SIGALRM.
    path = str(tmp_path / "hpo.db")
    ctx = multiprocessing.get_context("spawn")
    outcome = ctx.Queue()
    worker = ctx.Process(target=_interrupt_storage_calls, args=(path, 0, outcome))
    worker.start()
    result = outcome.get(timeout=120)
    worker.join(timeout=30)
    assert result == "ok"
    assert worker.exitcode == 0
    trials = optuna.load_study(study_name="ctrl-c", storage=open_storage(f"sqlite:///{path}"))
    trials = trials.get_trials()
    assert len(trials) == INTERRUPTS
    assert {t.state for t in trials} == {optuna.trial.TrialState.FAIL}
    assert {records.TrialRecord.of(t).stop_reason for t in trials} == {records.INTERRUPTED}


class _DiesInAsk(optuna.samplers.RandomSampler):
    """A worker killed inside ask(): its trial is stored, Optuna's heartbeat thread not started."""

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


def _ask_and_die(url: str) -> None:
    study = optuna.load_study(study_name="s", storage=open_storage(url), sampler=_DiesInAsk())
    study.ask()


def test_a_worker_killed_inside_ask_has_its_trial_failed_and_retried(tmp_path, monkeypatch):
    # a trial that never sent a heartbeat was never stale: it stayed RUNNING for good, and
    # every later run counted it as in play
    monkeypatch.setenv("HPO_HEARTBEAT_S", "1")
    monkeypatch.setenv("HPO_GRACE_S", "1")  # read by the workers, fresh processes
    url = f"sqlite:///{tmp_path}/hpo.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    study.enqueue_trial({"x": 0.5})  # the first worker takes a queued trial, the second a new one
    ctx = multiprocessing.get_context("spawn")
    for _ in range(2):
        worker = ctx.Process(target=_ask_and_die, args=(url,))
        worker.start()
        worker.join(timeout=120)
        assert worker.exitcode == -signal.SIGKILL
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING] * 2

    time.sleep(2.5)  # longer than the workers' grace period
    looker = ctx.Process(target=_fail_crashed, args=(url,))  # the next worker to look
    looker.start()
    looker.join(timeout=120)
    assert looker.exitcode == 0
    trials = study.get_trials()
    dead = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in dead] == [0, 1]
    assert all(records.TrialRecord.of(t).stop_reason == records.CRASHED for t in dead)
    retries = [t for t in trials if t.state == TrialState.WAITING]
    # each as it was: the queued config again, and a fresh one
    assert [t.system_attrs.get("fixed_params") for t in retries] == [{"x": 0.5}, None]


def _fail_crashed(url: str) -> None:
    fail_crashed_trials(optuna.load_study(study_name="s", storage=open_storage(url)))


def test_the_optuna_internals_hpo_relies_on_are_still_what_it_was_written_against(
    tmp_path, monkeypatch
):
    """hpo.storage overrides two private RDBStorage methods and reads a study's storage and a
    trial's id, for which Optuna has no public API (checked against optuna 5.1.0). If a new
    Optuna renames or stops calling any of them, this fails before a study silently loses its
    first heartbeats or its crash reasons."""
    rdb = optuna.storages.RDBStorage
    assert list(inspect.signature(rdb._create_new_trial).parameters) == [
        *("self", "study_id", "template_trial")
    ]
    assert list(inspect.signature(rdb._get_stale_trial_ids).parameters) == ["self", "study_id"]
    reached = []
    for name in ("_create_new_trial", "_get_stale_trial_ids"):
        ours = getattr(hpo.storage.Storage, name)

        def spy(self, *args, _ours=ours, _name=name, **kwargs):
            reached.append(_name)
            return _ours(self, *args, **kwargs)

        monkeypatch.setattr(hpo.storage.Storage, name, spy)
    storage = open_storage(f"sqlite:///{tmp_path}/hpo.db")
    study = optuna.create_study(study_name="internals", storage=storage)
    trial = study.ask()  # through Optuna's storage cache
    optuna.storages.fail_stale_trials(study)
    assert reached == ["_create_new_trial", "_get_stale_trial_ids"]

    # Optuna wraps an RDB storage in its cache: the same database, the same ids
    assert storage_of(study).get_study_id_from_name("internals") == storage.get_study_id_from_name(
        "internals"
    )
    by_public_api = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("internals"), trial.number
    )
    assert trial_id(trial) == trial_id(study.trials[0]) == by_public_api
    assert trial_id_by_number(study, trial.number) == by_public_api
    # a running trial's storage: an attribute without an underscore, but not in Optuna's docs
    assert trial.storage.get_trial(trial_id(trial)).number == trial.number
