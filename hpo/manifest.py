"""What produced a number: code version, packages, hardware, data and the resolved config."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from trainers import TrainConfig, TrainResult
from trainers.device import device_name

PACKAGES = ("torch", "optuna", "numpy", "transformers", "datasets", "tokenizers", "pandas", "scipy")
REPO = Path(__file__).resolve().parents[1]


@functools.cache
def environment() -> dict[str, Any]:
    """The part of a manifest that is the same for every trial of a process (computed once)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "git": _git(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "cuda": torch.version.cuda,
    }


def trial_manifest(cfg: TrainConfig, result: TrainResult) -> dict[str, Any]:
    return {
        **environment(),
        "device": result.device,
        "device_name": device_name(torch.device(result.device)),
        "data": result.data,
        "seeds": result.seeds,
        "config": cfg.to_dict(),
    }


def _git() -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}
