"""Shared fixtures: tiny configs that exercise every code path in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainers import TrainConfig

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


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
