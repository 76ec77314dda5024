"""The same study and budget on both backends: hpo.run --workers 2 against --backend ray.

    python benchmarks/ray_vs_optuna.py [--trials 16] [--seed 0]

lr_sweep's search space on the small model of benchmarks/search_efficiency.py (BENCH_SETS), the
built-in corpus, real SQLite storage, each backend in its own `python -m hpo.run` process:
  - optuna: --workers 2 (two processes, one thread each), Hyperband pruner
  - ray:    --backend ray, a local Ray on this machine, 1 CPU per trial (two trials at a time),
            ASHA (the Hyperband pruner's counterpart)
Reported per backend: wall time of the whole command, best value, trials by state, steps trained,
and for Ray its start-up cost (ray.init, and ray.init to the first trial running), as hpo.run
prints them. The machine's load average is printed too: on a shared machine it matters.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_efficiency import BENCH_SETS

from hpo.record import TrialRecord

BACKENDS = {
    "optuna --workers 2": ["--workers", "2"],
    "ray (2 trials at a time)": ["--backend", "ray", "--cpus-per-trial", "1"],
}
STARTUP = re.compile(
    r"ray: start-up ([\d.]+)s from ray.init to the first trial running \(ray.init ([\d.]+)s\)"
)


def run_backend(name: str, flags: list[str], *, trials: int, seed: int, corpus: str) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="hpo-bench-"))
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: unix socket paths
    url = f"sqlite:///{tmp}/hpo.db"
    sets = [f"--set={k}={v}" for k, v in {**BENCH_SETS, "data.corpus": corpus}.items()]
    study = ["--study", "lr_sweep", "--trials", str(trials), "--seed", str(seed)]
    cmd = [sys.executable, "-m", "hpo.run", *study, "--storage", url, "--no-progress"]
    cmd += [*sets, *flags]
    env = {**os.environ, "HPO_RUNS_DIR": str(tmp / "runs"), "RAY_TMPDIR": ray_tmp}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, start_new_session=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    study = optuna.load_study(study_name="lr_sweep", storage=url)
    ts = study.get_trials()
    row = {
        "backend": name,
        "wall_s": round(wall, 1),
        "best": round(study.best_value, 4),
        "trials": dict(Counter(t.state.name.lower() for t in ts)),
        "steps_trained": sum((TrialRecord.of(t).steps or 0) for t in ts),
        "train_s": round(sum((TrialRecord.of(t).wall_time_s or 0) for t in ts), 1),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    found = STARTUP.search(out.stderr)
    if found:
        row["ray_init_to_first_trial_s"] = float(found.group(1))
        row["ray_init_s"] = float(found.group(2))
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default="stdlib")
    args = p.parse_args()
    rows = []
    for name, flags in BACKENDS.items():
        row = run_backend(name, flags, trials=args.trials, seed=args.seed, corpus=args.corpus)
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
