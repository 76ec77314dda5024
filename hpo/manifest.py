"""What produced a number: code version, packages, hardware, data and the resolved config.

A trial's manifest is stored on the trial (in its record), in the tracker (W&B, MLflow) and
as manifest.json beside its checkpoints; a study's (user attr "hpo.manifest") says what started
the latest `hpo.run` of it. `hpo.run --replay` reruns a trial from its manifest alone.

Two code versions are recorded: hpo's own (`git`) and the training function's (`code`): the
commit and uncommitted changes of the repository its module lives in, or the sha256 of its
source file when that is in no repository.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hpo.trainable import load_entry
from trainers.config import flatten
from trainers.device import device_memory_mb, device_name

if TYPE_CHECKING:
    from hpo.seam import Outcome

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
        "git": _git(REPO),  # hpo's own code
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
    config: dict[str, Any],
    *,
    entry: str,
    facts: dict[str, Any],
    seeds: dict[str, int],
    steps: int | None = None,
    stop_reason: str | None = None,
) -> dict[str, Any]:
    """What produced a run of `entry` with `config`: `facts` are what the run noted (device,
    data fingerprint), `seeds` per component. Threads and deterministic mode are recorded
    because CPU float sums depend on them."""
    device = str(facts.get("device") or "cpu")
    data = facts.get("data") or {}
    return {
        **environment(),
        "code": code_version(entry),
        "entry": entry,
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
        # what a framework adapter's framework received (hpo.integrations): the record's proof
        "framework": facts.get("framework"),
        "steps": steps,
        "stop_reason": stop_reason,
        "config": config,
    }


def outcome_manifest(config: dict[str, Any], outcome: Outcome, *, entry: str) -> dict[str, Any]:
    """The manifest of a run that ended (hpo.seam.Outcome)."""
    return trial_manifest(
        config,
        entry=entry,
        facts=outcome.facts,
        seeds=outcome.seeds,
        steps=outcome.steps,
        stop_reason=outcome.stop_reason,
    )


def manifest_config(manifest: dict[str, Any]) -> dict[str, Any]:
    """The flat config a manifest holds: as written since the seam (it names its `entry`), or
    grouped as the built-in trainer's manifests were before."""
    config = manifest["config"]
    return dict(config) if "entry" in manifest else flatten(config)


def code_version(entry: str) -> dict[str, Any]:
    """The training function's code: its repository's commit, dirty flag and diff hash, or the
    sha256 of its source file (of its source, for a function defined in a notebook)."""
    module = sys.modules.get(entry.partition(":")[0])
    path = getattr(module, "__file__", None)
    if path is None:
        try:
            source = inspect.getsource(load_entry(entry, what="trainer.entry"))
        except Exception:  # no source to read (a builtin, a lost notebook cell)
            return {"file": None, "sha256": None}
        return {"file": None, "sha256": hashlib.sha256(source.encode()).hexdigest()}
    path = Path(path).resolve()
    return _file_version(path, path.stat().st_mtime_ns)


@functools.cache
def _file_version(path: Path, mtime_ns: int) -> dict[str, Any]:
    """Once per version of the file (git is asked once, not at every trial)."""
    root = _run_git(path.parent, "rev-parse", "--show-toplevel")
    if root is None:
        return {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {"file": str(path.relative_to(root)), "repo": root, **_git(Path(root))}


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


def _run_git(folder: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git(repo: Path) -> dict[str, Any]:
    commit = _run_git(repo, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _run_git(repo, "status", "--porcelain", "--untracked-files=no")
    diff = _diff_hash(repo) if status else None
    return {"commit": commit, "dirty": bool(status), "diff_sha256": diff}


def _diff_hash(repo: Path) -> str | None:
    """sha256 of `git diff HEAD` (staged and unstaged changes to tracked files): two dirty
    trees with the same commit and hash ran the same code."""
    try:
        out = subprocess.run(["git", "diff", "HEAD"], cwd=repo, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return hashlib.sha256(out.stdout).hexdigest() if out.returncode == 0 else None
