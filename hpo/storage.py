"""The one storage every command reads and writes: an Optuna RDB storage (SQLite or PostgreSQL).

Default: sqlite:///runs/hpo.db, or $HPO_STORAGE. SQLite runs in WAL mode with a generous lock
timeout, so several local workers and a dashboard share one file without "database is locked".
Every trial sends a heartbeat, so a trial whose worker died is failed (and its slot reused)
instead of staying RUNNING forever.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import optuna

from hpo.errors import HPOError

DEFAULT_STORAGE = "sqlite:///runs/hpo.db"
HEARTBEAT_INTERVAL_S = 20
GRACE_PERIOD_S = 90  # a trial silent this long has lost its worker


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
        engine_kwargs["connect_args"] = {"timeout": 120}
    elif "://" not in url:
        raise HPOError(
            f"storage {url!r} is not a database URL; use e.g. sqlite:///runs/hpo.db "
            "or postgresql://user@host:5432/db"
        )
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=GRACE_PERIOD_S,
        )
    except Exception as e:  # sqlalchemy's errors for bad URLs, missing drivers, refused connections
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HPOError(
            f"cannot open storage {masked(url)}: {reason} "
            "(check the URL, that the server is running, and its driver is installed)"
        ) from None
