"""The one storage every command reads and writes: an Optuna RDB storage (SQLite or PostgreSQL).

Default: sqlite:///runs/hpo.db, or $HPO_STORAGE. SQLite runs in WAL mode with a generous lock
timeout, so several local workers and a dashboard share one file without "database is locked".
Every trial sends a heartbeat. A trial whose worker died (killed, crashed, preempted) goes
silent; the next worker to look marks it failed with that reason and queues a retry of the same
parameters, which resumes from the dead trial's last checkpoint (hpo.objective).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import sqlite3
import time
from pathlib import Path

import optuna

from hpo.errors import HPOError

DEFAULT_STORAGE = "sqlite:///runs/hpo.db"
# A trial silent for the grace period has lost its worker. Environment overrides are for tests
# and for clusters whose workers are preempted often (a shorter grace retries sooner).
HEARTBEAT_INTERVAL_S = int(os.environ.get("HPO_HEARTBEAT_S", 20))
GRACE_PERIOD_S = int(os.environ.get("HPO_GRACE_S", 90))
MAX_RETRIES = 3  # a trial that kills its worker every time is not retried forever
OUTCOME_ATTRS = ("stop_reason", "fail_reason")  # what a retry must not inherit from its origin


def _sqlite_connect(path: str) -> sqlite3.Connection:
    """A generous lock timeout for parallel workers; synchronous=NORMAL, which in WAL mode
    stays safe from corruption and cuts each commit's cost several-fold (BENCHMARKS.md)."""
    db = sqlite3.connect(path, timeout=120, check_same_thread=False)
    db.execute("PRAGMA synchronous=NORMAL")
    return db


class RetryCrashedTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial (same parameters, its intermediate values inherited),
    minus the dead trial's outcome attributes, which describe the crash, not the retry."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in OUTCOME_ATTRS}
        super().__call__(study, trial)


def fail_crashed_trials(study: optuna.Study) -> None:
    """Fail the trials whose worker stopped sending heartbeats, saying so on each, and retry them.

    Optuna's own check (at the start of every trial) fails them too, but cannot record why:
    a finished trial's attributes are frozen, so the reason is written while it still runs.
    """
    storage = study._storage
    if not hasattr(storage, "_get_stale_trial_ids"):  # a storage without heartbeats
        return
    reason = (
        f"crashed: its worker sent no heartbeat for over {GRACE_PERIOD_S}s "
        "(killed, out of host memory, or its machine went away)"
    )
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        try:
            storage.set_trial_user_attr(trial_id, "stop_reason", "crashed")
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker got there first
    optuna.storages.fail_stale_trials(study)


def runs_dir() -> Path:
    """Where checkpoints, reports and the default database live ($HPO_RUNS_DIR or ./runs)."""
    return Path(os.environ.get("HPO_RUNS_DIR", "runs"))


def storage_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE


def masked(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Open (creating if needed) the storage at `url`. Raises HPOError with the reason."""
    engine_kwargs: dict = {}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(
                path
            ) as db:  # WAL persists in the file: readers never block writers
                db.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as e:
            raise HPOError(f"cannot open SQLite storage {url!r}: {e}") from None
        engine_kwargs["creator"] = functools.partial(_sqlite_connect, str(path))
    elif "://" not in url:
        raise HPOError(
            f"storage {url!r} is not a database URL; use e.g. sqlite:///runs/hpo.db "
            "or postgresql://user@host:5432/db"
        )
    else:
        engine_kwargs["pool_pre_ping"] = True  # a database restarted under a long study
    engine_url = url
    if url.startswith(("postgresql://", "postgres://")):
        # psycopg 3, whatever SQLAlchemy's default PostgreSQL driver (psycopg2 before 2.1)
        engine_url = "postgresql+psycopg://" + url.split("://", 1)[1]
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(
                engine_url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=GRACE_PERIOD_S,
                heartbeat_stale_trial_callback=RetryCrashedTrial(
                    max_retry=MAX_RETRIES, inherit_intermediate_values=True
                ),
            )
        except Exception as e:
            # two processes creating the schema of a new database at once: one loses the race
            # on Optuna's version table; the schema is there by the next attempt
            race = any(
                m in str(e) for m in ("UNIQUE constraint", "duplicate key", "already exists")
            )
            if race and attempt < 2:
                time.sleep(0.5)
                continue
            error = e
            break
    raise _storage_error(url, error)


def _storage_error(url: str, e: Exception) -> HPOError:
    """sqlalchemy's errors for bad URLs, missing drivers, refused connections: one line."""
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return HPOError(
        f"cannot open storage {masked(url)}: {reason} "
        "(check the URL, that the server is running, and its driver is installed)"
    )


def last_study() -> dict | None:
    """What `hpo.run` ran last here ({study_name, storage, study}), or None."""
    try:
        return json.loads((runs_dir() / "last_study.json").read_text())
    except (OSError, ValueError):
        return None


def load_existing_study(name: str | None, url: str | None) -> optuna.Study:
    """The named study (default: the one run last) from `url`; HPOError if there is none."""
    last = last_study() or {}
    name = name or last.get("study_name")
    url = storage_url(url or (last.get("storage") if name == last.get("study_name") else None))
    if not name:
        raise HPOError("no study given and none run here yet: pass --study NAME")
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        raise HPOError(
            f"no study {name!r} in {masked(url)}; studies there: {', '.join(names) or 'none'}"
        ) from None
