"""What the tests share: hpo's commands run as a user runs them (real subprocesses), or their
doors called in the test's own process where the test checks the service and not the process
boundary; what they stored read back, and waiting for things to happen. Fixtures live in
conftest.py."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
SMOKE_FAST = ["--set", "train.max_steps=30"]  # 3 evaluations: still prunable, twice as fast
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
# the commands that show a live progress bar unless told not to
WITH_PROGRESS = ("hpo.run", "hpo.worker", "hpo.validate")


def fake_study(folder: Path, name: str = "fake", **settings: Any) -> str:
    """A study YAML of the tests' fake trainable (tests/fakes.py): trials in milliseconds,
    accuracy maximized; `settings` add to or replace its trainer settings. Returns its path."""
    trainer = {"entry": "tests.fakes:quadratic", "x": 0.5, "train.max_steps": 40}
    trainer.update({"train.eval_interval": 10, **settings})
    path = folder / f"{name}.yaml"
    path.write_text(
        "description: the tests' fake trainable\n"
        "objective: {metric: val/accuracy, direction: maximize}\n"
        "search_space: {'tests.fakes:suggest': {}}\n"
        f"trainer: {json.dumps(trainer)}\n"
        "sampler: {name: tpe, n_startup_trials: 4}\n"
        "pruner: {name: sha}\n"
        "baseline: {x: 0.9}\n"
    )
    return str(path)


def sets(*pairs: str) -> list[str]:
    """--set flags: sets("train.max_steps=20", "model.n_layer=1")."""
    return [flag for pair in pairs for flag in ("--set", pair)]


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder}/hpo.db"


def command(module: str, *args: str) -> list[str]:
    quiet = ["--no-progress"] if module in WITH_PROGRESS else []
    return [sys.executable, "-m", module, *args, *quiet]


def run(
    module: str, *args: str, env: dict[str, str], check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`python -m module args` to the end; with check, its exit code must be 0."""
    out = subprocess.run(
        command(module, *args), capture_output=True, text=True, env=env, timeout=timeout
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def here(
    module: str, *args: str, runs: Path, capsys: pytest.CaptureFixture, check: bool = True
) -> subprocess.CompletedProcess:
    """`python -m module args` as `run` has it, but its door's main() called in this process:
    no interpreter or torch start-up. The runs folder is `runs`; settings read from the
    environment at import (heartbeats, storage retries) are this process's, so a test that
    sets those uses `run`."""
    main = importlib.import_module(module.replace("hpo.", "hpo.cli.", 1)).main
    sigterm = signal.getsignal(signal.SIGTERM)  # the door makes SIGTERM an interrupt
    before = os.environ.get("HPO_RUNS_DIR")
    os.environ["HPO_RUNS_DIR"] = str(runs)
    capsys.readouterr()  # what the test printed before is not the command's
    try:
        code = main(command(module, *args)[3:])
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        if before is None:
            del os.environ["HPO_RUNS_DIR"]
        else:
            os.environ["HPO_RUNS_DIR"] = before
    out = capsys.readouterr()
    if check:
        assert code == 0, out.err[-3000:]
    return subprocess.CompletedProcess([module, *args], code, out.out, out.err)


def run_hpo(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """`hpo.run` on the test's own SQLite file and runs folder."""
    env = env or {**os.environ, "HPO_RUNS_DIR": str(tmp_path / "runs")}
    return run("hpo.run", "--storage", sqlite_url(tmp_path), *args, env=env, check=check)


def start(module: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
    """Started in a process session of its own, so that `finish` can end all it started."""
    return subprocess.Popen(
        command(module, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[int, str, str]:
    """Its exit code, stdout and stderr; anything it left running (a local Ray) is ended."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{proc.args} did not finish: {err[-3000:]}")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, err


def run_ray(
    tmp_path: Path, env: dict[str, str], *args: str, expect: int = 0, timeout: float = 500
) -> str:
    """`hpo.run --backend ray` on the test's SQLite file; its stderr. The local Ray it starts
    is ended with it (it runs in a process session of its own)."""
    proc = start("hpo.run", "--storage", sqlite_url(tmp_path), "--backend", "ray", *args, env=env)
    code, _, err = finish(proc, timeout=timeout)
    assert code == expect, err[-4000:]
    return err


def load_trials(url: str, name: str = "smoke") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def trials_at(folder: Path, name: str = "smoke") -> list[optuna.trial.FrozenTrial]:
    """The trials of study `name` in the test's own SQLite file."""
    return load_trials(sqlite_url(folder), name)


def trials_so_far(folder: Path, name: str = "smoke") -> list[optuna.trial.FrozenTrial]:
    """As trials_at, for a study a running command may not have created yet: [] until then."""
    if not (folder / "hpo.db").exists():
        return []
    # read-only: opening it read-write would create Optuna's tables beside the command, a race
    # that fails one of the two, and a writer polling the file competes for its lock
    read_only = f"sqlite:///file:{folder}/hpo.db?mode=ro&uri=true"
    try:
        return load_trials(read_only, name)
    except KeyError:  # the database is there, the study not yet
        return []
    # its tables are not all there yet (Optuna, finding no version row, tries to write one)
    except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
        return []


def counted(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state in COUNTED]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> bytes | None:
    try:
        return urllib.request.urlopen(url, timeout=5).read()
    except OSError:
        return None


def wait_for(condition: Callable[[], Any], *, timeout: float = 180, what: str = "it") -> Any:
    """The first truthy value of `condition()`, polled; the test fails after `timeout`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def watch_with_dashboard(url: str, env: dict[str, str]) -> Callable[[], int]:
    """optuna-dashboard polling the study as an open browser tab does; returns a stop function
    that gives the number of answers it got."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hpo.dashboard", "--storage", url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    stop, polls = threading.Event(), [0]

    def watch() -> None:
        while not stop.is_set():
            if http_get(f"http://127.0.0.1:{port}/api/studies/1?after=0"):
                polls[0] += 1
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()

    def done() -> int:
        stop.set()
        watcher.join()
        os.killpg(server.pid, signal.SIGKILL)
        return polls[0]

    return done
