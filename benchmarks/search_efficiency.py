"""Search efficiency: best val loss against compute spent, for several strategies on one study.

    python benchmarks/search_efficiency.py [--seeds 3] [--budget-trials 30] [--strategies ...]

Strategies, each given the same compute budget (training steps summed over trials):
  - tpe+hyperband  (hpo's default: its sampler, pruner and lr_sweep space, through hpo's objective)
  - random         (random search, every trial trained to the end: the floor)
  - random+hyperband
  - optuna-tpe+hyperband, optuna-tpe+median: plain Optuna as its PyTorch examples write it,
    TPESampler() and HyperbandPruner() / MedianPruner() at their defaults, over a hand-written
    space (log-uniform lr, uniform betas, log-uniform weight decay, categorical optimizer and
    schedule), reporting val loss at each evaluation by its index, as the examples report
    epochs
Every run trains hpo's real trainer on real SQLite storage, with the same model, corpus and
trainer seed. Reported per strategy, median over study seeds: the final best value, and the
compute at which each strategy first matched the unpruned random search's final best (as a
fraction of the budget); and hpo's default against each other strategy, seed-paired (hpo.stats:
the mean difference with its 95% t-interval and the exact permutation p). Also the share of wall
time spent outside training: sampler, pruner, storage, process start-up.

    python benchmarks/search_efficiency.py --overhead-trials 12

times the real command on the real default study instead (the share of its wall time that is
not training).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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
from hpo.stats import compare_paired
from hpo.storage import open_storage
from hpo.strategy import make_pruner, make_sampler
from hpo.study_spec import load_study_spec
from trainers import DivergedError, StopTraining, TrainConfig, TrainerError, train

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
    "optuna-tpe+hyperband": ("optuna-tpe", "optuna-hyperband"),
    "optuna-tpe+median": ("optuna-tpe", "optuna-median"),
}
PLAIN_PRUNERS = {
    "optuna-hyperband": optuna.pruners.HyperbandPruner,
    "optuna-median": optuna.pruners.MedianPruner,
}


def hand_written_space(trial: optuna.Trial) -> dict:
    """The space a user writes by hand for Optuna: one lr range for every optimizer, betas
    sampled uniformly (and also for SGD, where they do nothing), weight decay always on."""
    return {
        "optim.name": trial.suggest_categorical("optimizer", ["adamw", "adam", "sgd"]),
        "optim.lr": trial.suggest_float("lr", 1e-5, 1e-1, log=True),
        "optim.beta1": trial.suggest_float("beta1", 0.8, 0.99),
        "optim.beta2": trial.suggest_float("beta2", 0.9, 0.999),
        "optim.weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True),
        "schedule.name": trial.suggest_categorical("schedule", ["cosine", "linear", "constant"]),
    }


class PlainObjective:
    """The objective of Optuna's PyTorch examples around hpo's trainer: report each evaluation,
    raise TrialPruned when told, return the best val loss. A run whose loss turns NaN returns
    NaN (Optuna records it FAILED); one that blows up but stays finite returns that loss, as a
    user's loop that trains on would (its steps counted up to where hpo's trainer stopped it)."""

    def __init__(self, base: TrainConfig) -> None:
        self.base = base

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.base.with_overrides(hand_written_space(trial))
        evaluations = [0]

        def report(step: int, metrics: dict[str, float]) -> None:
            trial.report(metrics["val/loss"], evaluations[0])
            evaluations[0] += 1
            trial.set_user_attr("steps", step)
            if trial.should_prune():
                raise StopTraining("pruned")

        try:
            result = train(cfg, report=report)
        except DivergedError as e:
            trial.set_user_attr("steps", e.step)
            return e.loss
        trial.set_user_attr("steps", result.steps)
        if result.stop_reason == "pruned":
            raise optuna.TrialPruned()
        return result.best_val_loss


def steps_of(trial: optuna.trial.FrozenTrial) -> int:
    """Training steps a trial took: hpo's record, or what the plain objective wrote."""
    return TrialRecord.of(trial).steps or trial.user_attrs.get("steps", 0)


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
    name = f"{sampler}-{pruner}-{seed}"
    if pruner in PLAIN_PRUNERS:  # as the user writes it: defaults, the study seed only
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=PLAIN_PRUNERS[pruner](),
        )
        objective = PlainObjective(spec.train_config(sets))
    else:
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
        study.sampler = make_sampler(spec, name=sampler, seed=seed, worker=0, n_existing=0)
        study.pruner = make_pruner(spec, name=pruner, cfg=spec.train_config(sets))
        objective = Objective(
            spec, sets=sets, target=10**9, checkpoint_root=workdir / f"ckpt-{name}"
        )
    start = time.perf_counter()
    study.optimize(objective, catch=(TrainerError,), callbacks=[StopAtBudget(budget)])
    wall = time.perf_counter() - start
    curve, best, steps = [], float("inf"), 0
    for t in study.get_trials(deepcopy=False):
        steps += steps_of(t)
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
        self.spent += steps_of(trial)
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


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run(task: tuple) -> tuple[str, int, dict]:
    name, seed, budget, workdir, corpus, n_startup = task
    sampler, pruner = STRATEGIES[name]
    return name, seed, run_strategy(sampler, pruner, seed, budget, workdir, corpus, n_startup)


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
        "--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES)
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="studies run side by side (1 torch thread each)"
    )
    parser.add_argument("--out", type=Path, help="also write every run's curve here (JSON)")
    parser.add_argument(
        "--from-json", type=Path, help="instead: summarize and plot the curves of an earlier --out"
    )
    parser.add_argument("--plot", type=Path, help="best-so-far against compute, as a PNG")
    parser.add_argument(
        "--overhead-trials",
        type=int,
        help="instead: time this many trials of the real default study (hpo.run --study lr_sweep)",
    )
    args = parser.parse_args()
    if args.overhead_trials:
        print(json.dumps(default_study_overhead(args.overhead_trials), indent=2))
        return
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        results, budget = saved["runs"], saved["budget_steps"]
        if args.plot:
            plot_curves(results, budget, args.plot)
        print(json.dumps(summarize(results, budget, len(results["random"])), indent=2))
        return
    names = list(dict.fromkeys(["tpe+hyperband", "random", *args.strategies]))
    budget = args.budget_trials * BENCH_SETS["train.max_steps"]
    runs: dict[str, dict[int, dict]] = {name: {} for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        tasks = [
            (name, seed, budget, Path(tmp), args.corpus, args.n_startup)
            for seed in range(args.seeds)
            for name in names
        ]
        if args.jobs == 1:
            done = map(_run, tasks)
        else:
            ctx = multiprocessing.get_context("spawn")
            pool = ctx.Pool(args.jobs, initializer=_init_worker, initargs=(1,))
            done = pool.imap_unordered(_run, tasks)
        for name, seed, r in done:
            runs[name][seed] = r
            print(
                f"seed {seed} {name:>20}: best {r['best']:.4f} "
                f"after {r['trials']} trials, {r['wall_s']:.0f}s",
                file=sys.stderr,
            )
    results = {name: [by_seed[s] for s in sorted(by_seed)] for name, by_seed in runs.items()}
    if args.out:
        args.out.write_text(json.dumps({"budget_steps": budget, "runs": results}))
    if args.plot:
        plot_curves(results, budget, args.plot)
    print(json.dumps(summarize(results, budget, args.seeds), indent=2))


def plot_curves(results: dict[str, list[dict]], budget: int, path: Path) -> None:
    """Median and quartiles over seeds of the best value so far, against the budget spent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.linspace(0, budget, 101)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in results.items():
        # best so far at each grid point (NaN before the first completed trial)
        rows = []
        for run in runs:
            steps = np.array([s for s, _ in run["curve"]], dtype=float)
            best = np.array([b for _, b in run["curve"]], dtype=float)
            at = np.searchsorted(steps, grid, side="right") - 1
            rows.append(np.where(at >= 0, best[np.clip(at, 0, None)], np.nan))
        with warnings.catch_warnings():  # all NaN before any seed has a completed trial
            warnings.simplefilter("ignore", RuntimeWarning)
            q = np.nanpercentile(np.where(np.isinf(rows), np.nan, rows), [25, 50, 75], axis=0)
        (line,) = ax.plot(grid / budget, q[1], label=name)
        ax.fill_between(grid / budget, q[0], q[2], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("share of the compute budget (training steps)")
    ax.set_ylabel("best val loss so far (median, quartiles over seeds)")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def summarize(results: dict[str, list[dict]], budget: int, seeds: int) -> dict:
    startup = startup_seconds()
    hpo = results["tpe+hyperband"]
    rows = {}
    for name, runs in results.items():
        fractions = [
            steps_to_reach(run["curve"], baseline["best"]) / budget
            for run, baseline in zip(runs, results["random"], strict=True)
        ]
        # the plain-Optuna objective keeps no training time: no overhead to report for it
        overhead = [
            (r["wall_s"] - r["train_s"] + startup) / (r["wall_s"] + startup)
            for r in runs
            if r["train_s"] > 0
        ]
        median_best = statistics.median(r["best"] for r in runs)
        row = {
            "median_best": round(median_best, 4),
            "best_per_seed": [round(r["best"], 4) for r in runs],
            "median_trials": statistics.median(r["trials"] for r in runs),
            "compute_to_match_random_final": round(statistics.median(fractions), 3),
            "overhead_share": round(statistics.median(overhead), 4) if overhead else None,
        }
        if name != "tpe+hyperband":
            # hpo's compute to first reach this strategy's median final best, seed by seed
            reach = [steps_to_reach(r["curve"], median_best) / budget for r in hpo]
            row["hpo_compute_to_match_median_final"] = round(statistics.median(reach), 3)
            if seeds >= 2:
                paired = compare_paired([r["best"] for r in hpo], [r["best"] for r in runs])
                row["hpo_minus_this"] = {
                    k: paired[k] for k in ("mean_diff", "ci_low", "ci_high", "p_value")
                }
        rows[name] = row
    return {
        "budget_steps": budget,
        "seeds": seeds,
        "startup_s": round(startup, 2),
        "strategies": rows,
    }


if __name__ == "__main__":
    main()
