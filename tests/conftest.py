"""Shared fixtures: tiny configs that exercise every code path in seconds on a CPU, the
environment every command runs in, and databases on the local PostgreSQL server. Helper
functions the tests share are in tests/helpers.py."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from trainers import TrainConfig

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


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
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN} ({e}); start it (see README)")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    # a connection of its own: the test may have restarted the server
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
