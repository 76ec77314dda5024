"""Shared fixtures: tiny configs that exercise every code path in seconds on a CPU, the
environment every command runs in, and databases on the local PostgreSQL server. Helper
functions the tests share are in tests/helpers.py."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
from packaging.version import Version

from trainers import TrainConfig

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"

# Tests run in two processes (pytest-xdist, pyproject.toml), except that the tests sharing one
# server run one at a time, in one process: some stop and restart PostgreSQL under the others,
# and two local Ray clusters on two cores would each starve the other's start-up. Named by the
# fixture that gives a test its server.
SERVER_OF_FIXTURE = {"pg_url": "postgresql", "local_env": "postgresql", "ray_env": "ray"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        servers = {SERVER_OF_FIXTURE[f] for f in item.fixturenames if f in SERVER_OF_FIXTURE}
        assert len(servers) <= 1, f"{item.nodeid} needs two servers: give it a group of its own"
        if servers:
            item.add_marker(pytest.mark.xdist_group(servers.pop()))


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist 3.8 puts a test in its group by renaming it, which pytest 9.2 ignores: the
    # groups would be dropped without a word (pytest-xdist#1386)
    grouped = (
        config.getoption("numprocesses", None) and config.getoption("dist", None) == "loadgroup"
    )
    if grouped and Version(pytest.__version__) >= Version("9.2"):
        raise pytest.UsageError(
            "pytest-xdist ignores test groups on pytest 9.2 (pytest-xdist#1386): "
            "pip install 'pytest<9.2', or run the tests with -n 0"
        )


@pytest.fixture(autouse=True)
def ctrl_c_reaches_commands() -> None:
    """A command a test starts inherits this process's signal dispositions. In a test process
    that has run many tests, SIGINT and SIGQUIT were found ignored at the C level (as C's
    system() leaves them while it runs; Python's own table still said default): a Ctrl-C test's
    command then never saw its SIGINT. Which code did it is not found yet; each test starts with
    both as a terminal gives them."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One tokenized-array cache for the whole session (and for subprocesses via HPO_CACHE)."""
    path = tmp_path_factory.mktemp("hpo-cache")
    os.environ["HPO_CACHE"] = str(path)
    return path


@pytest.fixture
def tiny_cfg(cache_dir) -> TrainConfig:
    """A model small enough to train 60 steps in about a second on a CPU."""
    return TrainConfig().with_overrides(
        {
            "data.corpus": "stdlib",
            "data.max_chars": 300_000,
            "data.cache_dir": str(cache_dir),
            "model.n_layer": 1,
            "model.n_head": 2,
            "model.n_embd": 32,
            "model.block_size": 32,
            "train.batch_size": 8,
            "train.max_steps": 60,
            "train.eval_interval": 20,
            "train.eval_batches": 2,
            "optim.lr": 3e-3,
        }
    )


@pytest.fixture
def env(tmp_path, cache_dir) -> dict[str, str]:
    """The environment a command runs in: a runs folder of the test's own."""
    return {**os.environ, "HPO_RUNS_DIR": str(tmp_path / "runs")}


@pytest.fixture
def ray_env(env):
    """As `env`, with a short Ray temp folder (unix socket paths are capped at 107 bytes)."""
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    yield {**env, "RAY_TMPDIR": ray_tmp}
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture
def pg_url():
    """A database of its own for each test on the local PostgreSQL server, dropped after."""
    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as e:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_ADMIN} ({e}); start it (see docs/testing.md)"
        )
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    # a connection of its own: the test may have restarted the server
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
