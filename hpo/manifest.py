"""What produced a number: code version, packages, hardware, data and the resolved config.

A trial's manifest is stored on the trial (user attr "manifest"), in the tracker (W&B, MLflow) and
as manifest.json beside its checkpoints; a study's (user attr "hpo.manifest") says what started
the latest `hpo.run` of it. `hpo.run --replay` reruns a trial from its manifest alone.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from trainers import TrainConfig, TrainResult
from trainers.device import device_memory_mb, device_name

PACKAGES = (
    *("torch", "optuna", "numpy", "transformers", "datasets", "tokenizers", "pandas", "scipy"),
    *("wandb", "mlflow", "mlflow-skinny"),
)
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
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        # the CPU kernels torch picked (AVX2, AVX512, ...): a study's values differ between two
        # of them in the last bits, and a pruning or sampling decision can flip on those
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def trial_manifest(
    cfg: TrainConfig,
    *,
    data: dict[str, Any],
    seeds: dict[str, int],
    device: str,
    steps: int | None = None,
    stop_reason: str | None = None,
) -> dict[str, Any]:
    """What produced a run: `data` is Data.info() (corpus fingerprint, tokenizer, sizes),
    `seeds` per component (init, data order, dropout). Threads and deterministic mode are
    recorded because CPU float sums depend on them."""
    return {
        **environment(),
        "device": device,
        "device_name": device_name(torch.device(device)),
        "device_memory_mb": device_memory_mb(torch.device(device)),
        # which GPU of the machine this was (hpo.devices gives each worker its own)
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "data": data,
        "tokenizer": data.get("tokenizer"),
        "seeds": seeds,
        "steps": steps,
        "stop_reason": stop_reason,
        "config": cfg.to_dict(),
    }


def result_manifest(cfg: TrainConfig, result: TrainResult) -> dict[str, Any]:
    """The manifest of a finished run."""
    return trial_manifest(
        cfg,
        data=result.data,
        seeds=result.seeds,
        device=result.device,
        steps=result.steps,
        stop_reason=result.stop_reason,
    )


def study_manifest(
    *, spec: dict[str, Any], sets: dict[str, Any], sampler: str, pruner: str, seed: int
) -> dict[str, Any]:
    """What started this run of the study: the code, the spec, --set, and the search's seeds."""
    return {
        **environment(),
        "spec": spec,
        "sets": sets,
        "sampler": sampler,
        "pruner": pruner,
        "seeds": {"sampler": seed},
    }


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """manifest.json in `folder` (beside a trial's checkpoints), written atomically."""
    path = Path(folder) / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


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
    diff = _diff_hash() if status else None
    return {"commit": commit, "dirty": bool(status), "diff_sha256": diff}


def _diff_hash() -> str | None:
    """sha256 of `git diff HEAD` (staged and unstaged changes to tracked files): two dirty
    trees with the same commit and hash ran the same code."""
    try:
        out = subprocess.run(["git", "diff", "HEAD"], cwd=REPO, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return hashlib.sha256(out.stdout).hexdigest() if out.returncode == 0 else None
