"""Packing small trials on a GPU: what --trials-per-gpu and packed validation seeds buy.

    python benchmarks/gpu_packing.py [--minutes 5] [--packs 1 2 4 8] [--seeds 10]

1. Trials per hour of the default study (lr_sweep, its 600-step budget) with K = 1, 2, 4, 8
   trials sharing each GPU: `hpo.run --trials-per-gpu K --timeout T`, each K on a fresh study
   with the same sampler seed; finished (complete or pruned) trials counted after T seconds.
2. hpo.validate's seeds packed on one GPU against one after another: `--seeds N --workers N`
   against `--workers 1`, on the best trial of a short lr_sweep study.

Every figure comes from the real commands; the machine and GPU are printed with them. See
benchmarks/gpu.md for when to run it and what the numbers mean.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import optuna
import torch

COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def hpo(module: str, *args: str, env: dict[str, str], timeout: float | None = None) -> float:
    """Seconds the command took; it must succeed."""
    start = time.perf_counter()
    command = [sys.executable, "-m", module, *args, "--no-progress"]
    subprocess.run(command, check=True, env=env, timeout=timeout)
    return time.perf_counter() - start


def trials_per_hour(pack: int, minutes: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/hpo.db"
        env = {**os.environ, "HPO_RUNS_DIR": f"{tmp}/runs"}
        args = ["--study", "lr_sweep", "--trials", "100000", "--storage", url]
        args += ["--trials-per-gpu", str(pack), "--timeout", str(60 * minutes)]
        seconds = hpo("hpo.run", *args, env=env)
        trials = optuna.load_study(study_name="lr_sweep", storage=url).get_trials()
    done = sum(t.state in COUNTED for t in trials)
    return {"trials_per_gpu": pack, "finished": done, "per_hour": round(3600 * done / seconds)}


def validation(seeds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/hpo.db"
        env = {**os.environ, "HPO_RUNS_DIR": f"{tmp}/runs"}
        hpo("hpo.run", "--study", "lr_sweep", "--trials", "8", "--storage", url, env=env)
        study = ["--study", "lr_sweep", "--storage", url, "--seeds", str(seeds)]
        one_by_one = hpo("hpo.validate", *study, "--workers", "1", env=env)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/hpo.db"
        env = {**os.environ, "HPO_RUNS_DIR": f"{tmp}/runs"}
        hpo("hpo.run", "--study", "lr_sweep", "--trials", "8", "--storage", url, env=env)
        study = ["--study", "lr_sweep", "--storage", url, "--seeds", str(seeds)]
        packed = hpo("hpo.validate", *study, "--workers", str(seeds), env=env)
    return {
        "seeds": seeds,
        "one_after_another_s": round(one_by_one, 1),
        "packed_s": round(packed, 1),
        "speedup": round(one_by_one / packed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="per packing level")
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_packing.py measures GPUs, and torch sees none here")
    machine = {
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    rows = [trials_per_hour(k, args.minutes) for k in args.packs]
    out = {"machine": machine, "trials_per_hour": rows, "validation": validation(args.seeds)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
