"""Search efficiency: best val loss against compute spent, for three strategies on one study.

    python benchmarks/search_efficiency.py [--seeds 3] [--budget-trials 30]

Strategies, each given the same compute budget (training steps summed over trials):
  - tpe+hyperband  (hpo's default)
  - random         (random search, every trial trained to the end: the baseline)
  - random+hyperband
Every run goes through hpo's real objective, trainer and SQLite storage. Reported per strategy,
median over study seeds: the final best value, and the compute at which each strategy first
matched the unpruned random search's final best (as a fraction of the budget). Also the share of
wall time spent outside training: sampler, pruner, storage, process start-up.

    python benchmarks/search_efficiency.py --overhead-trials 12

times the real command on the real default study instead (the share of its wall time that is
not training).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from hpo.objective import Objective
from hpo.record import TrialRecord
from hpo.storage import open_storage
from hpo.strategy import make_pruner, make_sampler
from hpo.study_spec import load_study_spec
from trainers import TrainerError

warnings.filterwarnings("ignore", category=ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

# lr_sweep's search space on a smaller model and budget, so 9 studies fit in minutes on a CPU
BENCH_SETS = {
    "model.n_layer": 2,
    "model.n_head": 2,
    "model.n_embd": 64,
    "train.max_steps": 300,
    "train.eval_interval": 25,
    "train.eval_batches": 4,
}
STRATEGIES = {
    "tpe+hyperband": ("tpe", "hyperband"),
    "random": ("random", "none"),
    "random+hyperband": ("random", "hyperband"),
}


def run_strategy(
    sampler: str,
    pruner: str,
    seed: int,
    budget: int,
    workdir: Path,
    corpus: str,
    n_startup: int | None,
) -> dict:
    sets = {**BENCH_SETS, "data.corpus": corpus}
    spec = load_study_spec("lr_sweep", sets=sets)
    if n_startup is not None:
        spec.sampler.n_startup_trials = n_startup
    storage = open_storage(f"sqlite:///{workdir}/{sampler}-{pruner}-{seed}.db")
    # a fixed name: Hyperband assigns trials to brackets by hashing the study name
    study = optuna.create_study(
        study_name=f"{sampler}-{pruner}-{seed}", storage=storage, direction="minimize"
    )
    study.sampler = make_sampler(spec, name=sampler, seed=seed, worker=0, n_existing=0)
    study.pruner = make_pruner(spec, name=pruner, cfg=spec.train_config(sets))
    objective = Objective(
        spec, sets=sets, target=10**9, checkpoint_root=workdir / f"ckpt-{sampler}-{pruner}-{seed}"
    )
    start = time.perf_counter()
    study.optimize(objective, catch=(TrainerError,), callbacks=[StopAtBudget(budget)])
    wall = time.perf_counter() - start
    curve, best, steps = [], float("inf"), 0
    for t in study.get_trials(deepcopy=False):
        steps += TrialRecord.of(t).steps or 0
        if t.state == TrialState.COMPLETE:
            best = min(best, t.value)
        curve.append((steps, best))
    train_time = sum(training_seconds(t) for t in study.get_trials(deepcopy=False))
    return {
        "curve": curve,
        "best": best,
        "wall_s": wall,
        "train_s": train_time,
        "trials": len(curve),
    }


class StopAtBudget:
    """Stops a study once its trials have trained `budget` steps in all."""

    def __init__(self, budget: int) -> None:
        self.budget, self.spent = budget, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.spent += TrialRecord.of(trial).steps or 0
        if self.spent >= self.budget:
            study.stop()


def training_seconds(trial: optuna.trial.FrozenTrial) -> float:
    """Time inside train() less what it spent reporting to the pruner (storage, pruning)."""
    return (TrialRecord.of(trial).wall_time_s or 0) - (TrialRecord.of(trial).tuner_time_s or 0)


def default_study_overhead(n_trials: int) -> dict:
    """The real command on the real default study: `python -m hpo.run --study lr_sweep`.

    Wall time of the whole process (start-up, storage, sampler, pruner, checkpoint clean-up)
    against the time spent training, over its first `n_trials` trials.
    """
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/hpo.db"
        start = time.perf_counter()
        study = ["--study", "lr_sweep", "--trials", str(n_trials)]
        command = [sys.executable, "-m", "hpo.run", *study, "--storage", url, "--no-progress"]
        subprocess.run(command, check=True, env={**os.environ, "HPO_RUNS_DIR": f"{tmp}/runs"})
        wall = time.perf_counter() - start
        trials = optuna.load_study(study_name="lr_sweep", storage=url).get_trials()
    train = sum(training_seconds(t) for t in trials)
    return {
        "trials": len(trials),
        "wall_s": round(wall, 1),
        "training_s": round(train, 1),
        "tuner_in_training_s": round(sum((TrialRecord.of(t).tuner_time_s or 0) for t in trials), 2),
        "overhead_share": round((wall - train) / wall, 4),
        "per_trial_ms": round(1000 * (wall - train) / len(trials), 1),
    }


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float:
    for steps, best in curve:
        if best <= target:
            return steps
    return float("inf")


def startup_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import hpo.run"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--budget-trials", type=int, default=30, help="budget = this many full trials"
    )
    parser.add_argument("--corpus", default="stdlib")
    parser.add_argument(
        "--n-startup", type=int, help="TPE random start-up trials (default: lr_sweep's)"
    )
    parser.add_argument(
        "--overhead-trials",
        type=int,
        help="instead: time this many trials of the real default study (hpo.run --study lr_sweep)",
    )
    args = parser.parse_args()
    if args.overhead_trials:
        print(json.dumps(default_study_overhead(args.overhead_trials), indent=2))
        return
    budget = args.budget_trials * BENCH_SETS["train.max_steps"]
    results: dict[str, list[dict]] = {name: [] for name in STRATEGIES}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for name, (sampler, pruner) in STRATEGIES.items():
                r = run_strategy(
                    sampler, pruner, seed, budget, Path(tmp), args.corpus, args.n_startup
                )
                results[name].append(r)
                print(
                    f"seed {seed} {name:>17}: best {r['best']:.4f} "
                    f"after {r['trials']} trials, {r['wall_s']:.0f}s",
                    file=sys.stderr,
                )
    startup = startup_seconds()
    rows = {}
    for name, runs in results.items():
        fractions = [
            steps_to_reach(run["curve"], baseline["best"]) / budget
            for run, baseline in zip(runs, results["random"], strict=True)
        ]
        overhead = [(r["wall_s"] - r["train_s"] + startup) / (r["wall_s"] + startup) for r in runs]
        rows[name] = {
            "median_best": round(statistics.median(r["best"] for r in runs), 4),
            "best_per_seed": [round(r["best"], 4) for r in runs],
            "median_trials": statistics.median(r["trials"] for r in runs),
            "compute_to_match_random_final": round(statistics.median(fractions), 3),
            "overhead_share": round(statistics.median(overhead), 4),
        }
    print(
        json.dumps(
            {
                "budget_steps": budget,
                "seeds": args.seeds,
                "startup_s": round(startup, 2),
                "strategies": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
