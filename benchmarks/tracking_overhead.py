"""What tracking costs a trial, and what a replay costs.

    python benchmarks/tracking_overhead.py [--trials 6] [--steps 60]

Runs the smoke study's objective in this process with each tracker (none, W&B offline, MLflow
on a local SQLite store) on the same trials (fixed sampler seed, no pruning) and reports the
time spent inside the tracker per trial (run start, every evaluation's metrics, the manifest,
the finish) beside the trial's own wall time. The first trial of a backend also pays for
importing it and starting it (W&B's service process, MLflow's database schema); it is shown
apart. Then one trial is replayed from its manifest and timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from hpo.objective import Objective
from hpo.study_spec import load_study_spec
from hpo.tracking import make_tracker, resolve_tracking
from hpo.validation.replay import replay_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


def run(backend: str, root: Path, trials: int, steps: int) -> dict:
    os.environ["HPO_RUNS_DIR"] = str(root / "runs")
    spec = load_study_spec("smoke")
    study = optuna.create_study(
        study_name=f"bench_{backend}",
        storage=f"sqlite:///{root}/{backend}.db",
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3),
        pruner=optuna.pruners.NopPruner(),
    )
    study.set_user_attr("hpo.spec", spec.to_json())
    tracker = make_tracker(resolve_tracking(backend, study=study.study_name))
    tracker.open_study(study, {"bench": True})
    objective = Objective(
        spec,
        sets={"train.max_steps": steps},
        target=trials,
        checkpoint_root=root / backend,
        tracker=tracker,
    )
    per_trial, walls = [], []
    for _ in range(trials):
        before = tracker.overhead_s
        t = time.perf_counter()
        study.optimize(objective, n_trials=1)
        walls.append(time.perf_counter() - t)
        per_trial.append(tracker.overhead_s - before)
    tracker.close_study(study)
    return {"study": study, "first": per_trial[0], "rest": per_trial[1:], "walls": walls}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--steps", type=int, default=60, help="train.max_steps (an eval every 10)")
    args = p.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("HPO_CACHE", str(root / "cache"))
        results = {b: run(b, root, args.trials, args.steps) for b in ("none", "wandb", "mlflow")}
        print(f"{args.trials} trials of {args.steps} steps ({args.steps // 10} evaluations each)")
        print(
            f"{'tracker':<8} {'first trial':>12} {'later trials (median)':>22} {'trial wall':>11}"
        )
        for backend, r in results.items():
            first, rest = r["first"] * 1e3, statistics.median(r["rest"]) * 1e3
            wall = statistics.median(r["walls"][1:])
            print(f"{backend:<8} {first:>10.0f}ms {rest:>20.0f}ms {wall:>10.2f}s")
        study = results["none"]["study"]
        t = time.perf_counter()
        rep = replay_trial(study, study.best_trial.number)
        print(
            f"replay of trial {study.best_trial.number}: {'match' if rep.matches else 'MISMATCH'} "
            f"in {time.perf_counter() - t:.2f}s (training alone: {rep.wall_time_s:.2f}s)"
        )


if __name__ == "__main__":
    main()
