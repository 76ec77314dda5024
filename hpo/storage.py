"""The one storage every command reads and writes: an Optuna RDB storage (SQLite or PostgreSQL).

Default: hpo.db in the runs folder ($HPO_RUNS_DIR, or ./runs), or $HPO_STORAGE. SQLite runs
in WAL mode with a generous lock timeout, so several local workers and a dashboard share one
file without "database is locked".
Every trial sends a heartbeat. A trial whose worker died (killed, crashed, preempted) goes
silent; the next worker to look marks it failed with that reason and queues a retry of the same
parameters, which resumes from the dead trial's last checkpoint (hpo.objective).

A PostgreSQL password never stays in the URL the storage keeps (Ray pickles storages into its
experiment folder): it goes to libpq through PGPASSWORD, as ~/.pgpass would. A server that
restarts under a running study is waited for (HPO_STORAGE_RETRY_S, default 120 s); past that,
the command ends with one line and the running trial is retried when the study resumes.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from hpo import record as records
from hpo.errors import UsageError

log = logging.getLogger(__name__)

# A trial silent for the grace period has lost its worker. Environment overrides are for tests
# and for clusters whose workers are preempted often (a shorter grace retries sooner).
HEARTBEAT_INTERVAL_S = int(os.environ.get("HPO_HEARTBEAT_S", 20))
GRACE_PERIOD_S = int(os.environ.get("HPO_GRACE_S", 90))
CRASH_REASON = (
    f"crashed: its worker sent no heartbeat for over {GRACE_PERIOD_S}s "
    "(killed, out of host memory, or its machine went away)"
)
MAX_RETRIES = 3  # a trial that kills its worker every time is not retried forever
STORAGE_RETRY_S = float(os.environ.get("HPO_STORAGE_RETRY_S", 120))
STORAGE_ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)
_reached: set[str] = set()  # PostgreSQL servers this process has connected to once
_gone: dict[str, float] = {}  # ... and when one was last waited for in vain


class _RollbackOnClose(sqlite3.Connection):
    """A connection that ends its transaction when closed. Ctrl-C inside a statement makes
    SQLAlchemy close the connection, but the interrupted statement is still referenced (by the
    KeyboardInterrupt's traceback), and SQLite keeps a connection with a live statement open,
    its transaction and write lock included, until that statement is freed: until then every
    transaction of every process, this one's included, waits for the lock timeout."""

    def close(self) -> None:
        if self.in_transaction:
            # the interrupted statement may refuse it; close() then does what it can
            with contextlib.suppress(sqlite3.Error):
                self.rollback()
        super().close()


def _sqlite_connect(path: str) -> sqlite3.Connection:
    """A generous lock timeout for parallel workers; synchronous=NORMAL, which in WAL mode
    stays safe from corruption and cuts each commit's cost several-fold
    (benchmarks/results/search_efficiency.md). The driver begins no transaction of its own:
    _begin_immediate does."""
    db = sqlite3.connect(
        path,
        timeout=120,
        check_same_thread=False,
        isolation_level=None,
        factory=_RollbackOnClose,
    )
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _begin_immediate(connection: sqlalchemy.engine.Connection) -> None:
    """Each SQLite transaction takes the write lock as it begins, not at its first write.
    Optuna reads a trial's state and then changes it (a queued trial taken by a worker): on
    PostgreSQL that read locks the row (SELECT ... FOR UPDATE); SQLite has no row locks, and
    Python's driver begins a transaction only at the first write, so two workers could both
    find a queued trial waiting and both run it."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _end_transaction(db: sqlite3.Connection, _record: Any) -> None:
    """Roll back what a connection returned to the pool still has open. Ctrl-C at the wrong
    moment (between a BEGIN and SQLAlchemy noting it, or inside a commit) returns it
    mid-transaction, and the write lock it keeps would make the next transaction, on another
    connection of the same pool, wait for the lock timeout."""
    if db is not None and db.in_transaction:
        db.rollback()


def _postgres_connect(conninfo: str):
    """A psycopg connection. A server this process has reached before and that now refuses
    (restarting, failing over) is retried for STORAGE_RETRY_S; a first connection fails at once,
    so a wrong URL is reported in seconds."""
    import psycopg

    start = time.monotonic()
    deadline, delay = start + STORAGE_RETRY_S, 0.5
    # a server just waited for in vain is not waited for again: the connections a failing run
    # still opens on its way out (recording its trial, Optuna's own) each waited a whole
    # window, and a run whose storage was gone took several windows to end
    waited_in_vain = start - _gone.get(conninfo, -math.inf) < STORAGE_RETRY_S
    while True:
        try:
            db = psycopg.connect(conninfo)
        except psycopg.OperationalError:
            if conninfo not in _reached or waited_in_vain:
                raise
            if time.monotonic() + delay > deadline:
                _gone[conninfo] = time.monotonic()
                raise
            time.sleep(delay)
            delay = min(2 * delay, 5.0)
            continue
        _reached.add(conninfo)
        _gone.pop(conninfo, None)
        return db


class RetryCrashedTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial (same parameters, its intermediate values inherited),
    with a fresh record: the dead trial's describes the crash, not the retry (the retry writes
    its own, retry_of included). A re-evaluation's retry keeps what it re-evaluates."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        dead = records.TrialRecord.of(trial)
        trial = copy.copy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != records.ATTR}
        if dead.reevaluates is not None:
            again = records.TrialRecord(reevaluates=dead.reevaluates, seed_index=dead.seed_index)
            trial.user_attrs[records.ATTR] = again.to_json()
        super().__call__(study, trial)


class Storage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose heartbeat survives a database hiccup: a beat that cannot be
    written is skipped (the grace period is several beats long), instead of killing Optuna's
    heartbeat thread, after which a trial still training would look dead to other workers."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._lock_sqlite_transactions()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # unpickled (Ray's searcher): a new engine
        self._lock_sqlite_transactions()

    def _lock_sqlite_transactions(self) -> None:
        if self.engine.dialect.name == "sqlite":
            sqlalchemy.event.listen(self.engine, "begin", _begin_immediate)
            sqlalchemy.event.listen(self.engine, "checkin", _end_transaction)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except STORAGE_ERRORS as e:
            # said once per trial: a storage that stays away is reported by the main thread
            level = logging.DEBUG if trial_id in self._missed else logging.WARNING
            self._missed.add(trial_id)
            log.log(level, "missed a heartbeat of trial id %d: %s", trial_id, first_line(e))

    @functools.cached_property
    def _missed(self) -> set[int]:
        return set()

    # A trial's first beat goes with its creation. Optuna's heartbeat thread starts only once
    # ask() has returned (after the sampler's before_trial), and a Ray trial waits for a slot
    # after it is asked for; a trial that never beat is never stale, so a worker or driver that
    # died in between left it RUNNING for good, counted as in play by every later run of the
    # study. Optuna's storage cache calls this private method, not create_new_trial (checked
    # against optuna 5.1.0: tests/hpo/test_storage.py fails if it stops doing so).
    def _create_new_trial(
        self, study_id: int, template_trial: optuna.trial.FrozenTrial | None = None
    ) -> optuna.trial.FrozenTrial:
        trial = super()._create_new_trial(study_id, template_trial)
        if trial.state == optuna.trial.TrialState.RUNNING:
            self._first_beat(trial_id(trial))
        return trial

    def set_trial_state_values(
        self,
        trial_id: int,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None = None,
    ) -> bool:
        # a queued trial (a retry, an enqueued config) taken by ask()
        changed = super().set_trial_state_values(trial_id, state, values)
        if changed and state == optuna.trial.TrialState.RUNNING:
            self._first_beat(trial_id)
        return changed

    def _first_beat(self, trial_id: int) -> None:
        if self.get_heartbeat_interval() is not None:
            self.record_heartbeat(trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """The trials whose worker went silent, each told why while it still runs: Optuna
        fails them (at the start of every trial, and in fail_crashed_trials) but cannot record
        a reason, since a finished trial's attributes are frozen. Whichever worker fails a
        trial first, its record says crashed. (A private method, checked against optuna 5.1.0:
        tests/hpo/test_storage.py fails if Optuna stops calling it.)"""
        stale = super()._get_stale_trial_ids(study_id)
        for trial_id in stale:
            # another worker may have failed it first: a finished trial refuses the write
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                records.update_by_id(
                    self, trial_id, stop_reason=records.CRASHED, fail_reason=CRASH_REASON
                )
        return stale


# Optuna's internals, all in this module (checked against optuna 5.1.0; tests/hpo/test_storage.py
# fails if Optuna changes them): a study's storage and a trial's id have no public accessor, and
# Storage above overrides two private RDBStorage methods (_create_new_trial,
# _get_stale_trial_ids). An optuna.Trial's storage is public: trial.storage.


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage `study` lives in (the companion study of seed re-runs shares it)."""
    return study._storage


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (Optuna's public API speaks in trial numbers)."""
    return trial._trial_id


def trial_id_by_number(study: optuna.Study, number: int) -> int:
    # the study's id as the study holds it: get_study_id_from_name would query it again
    return storage_of(study).get_trial_id_from_study_id_trial_number(study._study_id, number)


def update_record(study: optuna.Study, number: int, **changes: Any) -> records.TrialRecord:
    """Change some fields of a running trial's record, the trial known by its number only (the
    Ray driver, a worker failing another's dead trial); returns the new record."""
    return records.update_by_id(storage_of(study), trial_id_by_number(study, number), **changes)


def storage_failure(e: BaseException | None) -> BaseException | None:
    """The storage error behind `e`, if there is one. Optuna 5.0 can raise another error on
    top of it: when a trial's final tell fails, its _run_trial ends in an UnboundLocalError."""
    return next((c for c in exception_chain(e) if isinstance(c, STORAGE_ERRORS)), None)


def exception_chain(e: BaseException | None) -> list[BaseException]:
    """`e` and the errors it was raised from or while handling, newest first."""
    chain: list[BaseException] = []
    while e is not None and all(e is not seen for seen in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def first_line(e: BaseException) -> str:
    lines = str(getattr(e, "orig", None) or e.__cause__ or e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def fail_crashed_trials(study: optuna.Study) -> None:
    """Fail the trials whose worker stopped sending heartbeats, saying so on each (Storage
    writes the reason), and retry them."""
    optuna.storages.fail_stale_trials(study)


def runs_dir() -> Path:
    """Where checkpoints, reports and the default database live ($HPO_RUNS_DIR or ./runs)."""
    return Path(os.environ.get("HPO_RUNS_DIR", "runs"))


def storage_url(explicit: str | None = None) -> str:
    """--storage, else $HPO_STORAGE, else hpo.db in the runs folder ($HPO_RUNS_DIR or ./runs).
    An empty one (a shell variable that was not set) is refused, not read as the default."""
    if explicit is not None and not explicit.strip():
        raise UsageError(
            "--storage is empty: give a database URL, or leave the flag out for hpo.db in "
            "the runs folder"
        )
    return explicit or os.environ.get("HPO_STORAGE") or f"sqlite:///{runs_dir() / 'hpo.db'}"


def masked(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def public_url(url: str) -> str:
    """The URL without its password: safe to print and to write down, and still a URL that
    works where the password comes from PGPASSWORD, ~/.pgpass or $HPO_STORAGE."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1@", url)


def open_storage(url: str, *, create: bool = True) -> optuna.storages.RDBStorage:
    """Open the storage at `url` (create=False: an SQLite file must exist already, so that a
    mistyped path is refused instead of left behind empty). Raises UsageError with the reason."""
    url = _with_known_password(url)
    engine_kwargs: dict = {}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.is_file():
            raise UsageError(
                f"no SQLite database at {str(path)!r}: check --storage or $HPO_STORAGE "
                "(hpo.run creates it)"
            )
        if not path.parent.is_dir() and path.parent.resolve() != runs_dir().resolve():
            # only the default location is made on first use: a mistyped folder is an error,
            # not a new database where nobody will look for it
            raise UsageError(
                f"no folder {str(path.parent)!r} for the SQLite database {path.name!r}: "
                "check --storage or $HPO_STORAGE, or create the folder"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(
                path
            ) as db:  # WAL persists in the file: readers never block writers
                db.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as e:
            raise UsageError(f"cannot open SQLite storage {url!r}: {e}") from None
        engine_kwargs["creator"] = functools.partial(_sqlite_connect, str(path))
    elif "://" not in url:
        raise UsageError(
            f"storage {url!r} is not a database URL; use e.g. sqlite:///runs/hpo.db "
            "or postgresql://user@host:5432/db"
        )
    else:
        engine_kwargs["pool_pre_ping"] = True  # a database restarted under a long study
    engine_url = url
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        engine_url, conninfo = _postgres_urls(url)
        engine_kwargs["creator"] = functools.partial(_postgres_connect, conninfo)
    for attempt in range(3):
        try:
            return Storage(
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


def _postgres_urls(url: str) -> tuple[str, str]:
    """(SQLAlchemy URL, libpq conninfo), both without the password, which moves to PGPASSWORD.
    The driver is psycopg 3, whatever SQLAlchemy's default (psycopg2 before 2.1)."""
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.password:
        os.environ["PGPASSWORD"] = str(parsed.password)  # the URL's own beats an older one
    # URL.set ignores a None; URL is a NamedTuple, whose _replace does not
    public = parsed._replace(password=None)
    return (
        public.set(drivername="postgresql+psycopg").render_as_string(hide_password=False),
        public.set(drivername="postgresql").render_as_string(hide_password=False),
    )


def _with_known_password(url: str) -> str:
    """$HPO_STORAGE when it is `url` plus a password: what a URL read back from a file (which
    never holds the password) needs to connect."""
    env = os.environ.get("HPO_STORAGE", "")
    return env if env != url and public_url(env) == url else url


def _storage_error(url: str, e: Exception) -> UsageError:
    """sqlalchemy's errors for bad URLs, missing drivers, refused connections: one line."""
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return UsageError(
        f"cannot open storage {masked(url)}: {reason} "
        "(check the URL, that the server is running, and its driver is installed)"
    )


def last_study() -> dict | None:
    """What `hpo.run` ran last here ({study_name, storage, study}), or None."""
    try:
        return json.loads((runs_dir() / "last_study.json").read_text())
    except (OSError, ValueError):
        return None


def stored_name(study: str | None, study_name: str | None) -> str | None:
    """The name in the storage that --study and --study-name point at (None: not given)."""
    if study_name:
        return study_name
    if study and (study.endswith((".yaml", ".yml")) or "/" in study):
        return Path(study).stem
    return study


def load_existing_study(name: str | None, url: str | None) -> optuna.Study:
    """The named study (default: the one run last) from `url` (default: $HPO_STORAGE, else the
    storage of the study run last, else the default); UsageError if there is none."""
    last = last_study() or {}
    name = name or last.get("study_name")
    if not name:
        raise UsageError("no study given and none run here yet: pass --study NAME")
    if url is None and not os.environ.get("HPO_STORAGE") and name == last.get("study_name"):
        url = last.get("storage")
    url = storage_url(url)
    storage = open_storage(url, create=False)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        raise UsageError(
            f"no study {name!r} in {public_url(url)}; studies there: {', '.join(names) or 'none'}"
        ) from None


def remember_last_study(name: str, url: str, spec_path: str) -> None:
    """So that `hpo.validate` and `hpo.analyze` default to the study run last. The storage is
    written without its password."""
    try:
        runs_dir().mkdir(parents=True, exist_ok=True)
        (runs_dir() / "last_study.json").write_text(
            json.dumps({"study_name": name, "storage": public_url(url), "study": spec_path})
        )
    except OSError:
        pass


def lost_storage(url: str, e: BaseException) -> str:
    """One line for a storage that went away mid-study (after STORAGE_RETRY_S of retries)."""
    return (
        f"lost the storage {masked(url)} ({first_line(e)}); finished trials are safe in it: "
        "rerun the same command once it is back, and the trial that was running is retried "
        "from its checkpoint"
    )
