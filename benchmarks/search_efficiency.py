"""Search efficiency: best val loss against compute spent, for several strategies on one study.

    python benchmarks/search_efficiency.py [--seeds 3] [--budget-trials 30] [--strategies ...]

Strategies, each given the same compute budget (training steps summed over trials):
  - tpe+sha        (hpo's default: its sampler, lr_sweep's pruner, asynchronous successive
                    halving (ASHA), and its space, through hpo's objective)
  - tpe+hyperband  (the same with Hyperband, hpo's default before ASHA)
  - random         (random search, every trial trained to the end: the floor)
  - random+hyperband
  - optuna-tpe+hyperband, optuna-tpe+median: plain Optuna as its PyTorch examples write it,
    TPESampler() and HyperbandPruner() / MedianPruner() at their defaults, over a hand-written
    space (log-uniform lr, uniform betas, log-uniform weight decay, categorical optimizer and
    schedule), reporting val loss at each evaluation by its index, as the examples report
    epochs
  - tpe+hyperband/hand-space: hpo's sampler and pruner on that hand-written space (so the
    effect of hpo's space and of hpo's search are told apart)
  - tpe+sha/hand-space: the same under today's default (the baseline first, as hpo's default
    gets it, written in the hand-written space)
  - optuna-tpe+hyperband/baseline-first: plain Optuna given the baseline as its first trial
    (`study.enqueue_trial`, as Optuna's docs write it): what comes from the baseline alone
  - ray-optuna+asha: Ray Tune as its documentation writes it, OptunaSearch() and
    ASHAScheduler() at their defaults, one trial at a time, over the hand-written space
    (tune.loguniform / tune.uniform / tune.choice), val loss reported at each evaluation; its
    best counts only trials run to the end, as the Optuna rows count only complete trials
  - smac-mf, syne-bohb: SMAC3's multi-fidelity facade and Syne Tune's BOHB on the hand-written
    space (benchmarks/peers.py; pip install -e .[bench-peers])
Every run trains hpo's real trainer on real SQLite storage, with the same model, corpus and
trainer seed. Reported per strategy, median over study seeds: the final best value, and the
compute at which each strategy first matched the unpruned random search's final best (as a
fraction of the budget); and hpo's default against each other strategy, seed-paired
(hpo.validation.stats:
the mean difference with its 95% t-interval and the exact permutation p). With --test-seeds N,
each study's chosen config is trained again on N fresh seeds and scored on the test split as
hpo.validate scores (the best val value of a search is optimistic), compared the same way. Also
the share of wall time spent outside training: sampler, pruner, storage, process start-up.
--alone runs only the given strategies (say Ray's, whose studies run one at a time in this
process, each on a local Ray) into --out; --from-json A.json B.json then summarizes them together.
A lever is measured alone with --spec: hpo's rows with one of lr_sweep's sampler or pruner
settings changed, named with it, e.g. `--alone --strategies tpe+sha --spec
pruner.reduction_factor=4` gives the row tpe+sha[pruner.reduction_factor=4], merged with the
default's run by --from-json.

    python benchmarks/search_efficiency.py --overhead-trials 12

times the real command on the real default study instead (the share of its wall time that is
not training).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pydantic
import torch
import yaml
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState
from ray.tune.stopper import Stopper

from hpo.manifest import environment
from hpo.objective import Objective, TrialFailed
from hpo.record import TrialRecord
from hpo.storage import open_storage
from hpo.strategy import make_pruner, make_sampler
from hpo.study_spec import StudySpec, baseline_params, load_study_spec
from hpo.trainable import BUILTIN_ENTRY, load_trainable
from hpo.validation.stats import compare_paired, median_interval
from hpo.validation.validate import SEED_BASE, Job, run_job
from trainers import DivergedError, StopTraining, TrainConfig, train
from trainers.config import flatten
from trainers.device import device_name

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
# name: (sampler, pruner, space); "optuna-*" are plain Optuna's defaults, "ray" is Ray Tune's
STRATEGIES = {
    "tpe+hyperband": ("tpe", "hyperband", "hpo"),
    "tpe+sha": ("tpe", "sha", "hpo"),
    "random": ("random", "none", "hpo"),
    "random+hyperband": ("random", "hyperband", "hpo"),
    "optuna-tpe+hyperband": ("optuna-tpe", "optuna-hyperband", "hand"),
    "optuna-tpe+median": ("optuna-tpe", "optuna-median", "hand"),
    "tpe+hyperband/hand-space": ("tpe", "hyperband", "hand"),
    "tpe+sha/hand-space": ("tpe", "sha", "hand"),
    "optuna-tpe+hyperband/baseline-first": ("optuna-tpe", "optuna-hyperband", "hand"),
    "ray-optuna+asha": ("ray-optuna", "ray-asha", "hand"),
    # benchmarks/peers.py, pip install -e .[bench-peers]
    "smac-mf": ("smac", "smac-hyperband", "hand"),
    "syne-bohb": ("syne-tune", "syne-bohb", "hand"),
}
HPO_SAMPLERS = ("tpe", "random")  # rows made by hpo.strategy from lr_sweep's spec
PLAIN_PRUNERS = {
    "optuna-hyperband": optuna.pruners.HyperbandPruner,
    "optuna-median": optuna.pruners.MedianPruner,
}


# The hand-written space, once: each library's rows (Optuna, Ray Tune, benchmarks/peers.py)
# write it in their own API from these, so that no row searches other bounds.
OPTIMIZERS = ["adamw", "adam", "sgd"]
SCHEDULES = ["cosine", "linear", "constant"]
HAND_FLOATS = {  # name: (low, high, log-uniform)
    "lr": (1e-5, 1e-1, True),
    "beta1": (0.8, 0.99, False),
    "beta2": (0.9, 0.999, False),
    "weight_decay": (1e-5, 1e-1, True),
}


def hand_written_space(trial: optuna.Trial) -> dict:
    """The space a user writes by hand for Optuna: one lr range for every optimizer, betas
    sampled uniformly (and also for SGD, where they do nothing), weight decay always on."""
    return hand_overrides(
        {
            "optimizer": trial.suggest_categorical("optimizer", OPTIMIZERS),
            **{
                name: trial.suggest_float(name, low, high, log=log)
                for name, (low, high, log) in HAND_FLOATS.items()
            },
            "schedule": trial.suggest_categorical("schedule", SCHEDULES),
        }
    )


# the hand-written space's names and the trainer's settings they set
HAND_SETTINGS = {
    "optimizer": "optim.name",
    "lr": "optim.lr",
    "beta1": "optim.beta1",
    "beta2": "optim.beta2",
    "weight_decay": "optim.weight_decay",
    "schedule": "schedule.name",
}


def hand_baseline(config: dict) -> dict:
    """The baseline's config as a point of the hand-written space (hand_overrides inverted)."""
    return {name: config[setting] for name, setting in HAND_SETTINGS.items()}


def hand_overrides(values: dict) -> dict:
    """The hand-written space's values as the trainer's settings."""
    return {setting: values[name] for name, setting in HAND_SETTINGS.items()}


class PlainObjective:
    """The objective of Optuna's PyTorch examples around hpo's trainer: report each evaluation,
    raise TrialPruned when told, return the best val loss. A run whose loss turns NaN returns
    NaN (Optuna records it FAILED); one that blows up but stays finite returns that loss, as a
    user's loop that trains on would (its steps counted up to where hpo's trainer stopped it).

    It reports by evaluation index, as the examples report epochs, or, for hpo's pruner (whose
    resource is training steps), by step.
    """

    def __init__(self, base: TrainConfig, *, by_step: bool = False) -> None:
        self.base, self.by_step = base, by_step

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.base.with_overrides(hand_written_space(trial))
        trial.set_user_attr("config", cfg.to_dict())
        evaluations = [0]

        def report(step: int, metrics: dict[str, float]) -> None:
            trial.report(metrics["val/loss"], step if self.by_step else evaluations[0])
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
    name: str, seed: int, budget: int, workdir: Path, corpus: str, spec_sets: dict[str, str]
) -> dict:
    """One study of strategy `name` with study seed `seed`, stopped at `budget` steps;
    `spec_sets` change lr_sweep's sampler and pruner settings (hpo's rows only)."""
    sampler, pruner, space = STRATEGIES[name]
    sets = {**BENCH_SETS, "data.corpus": corpus}
    spec = with_spec_sets(load_study_spec("lr_sweep", sets=sets), spec_sets)
    fixed = spec.fixed_config(sets)
    base = TrainConfig.from_dict(fixed)
    if sampler == "ray-optuna":
        return run_ray_tune(base, seed, budget, workdir)
    if sampler == "smac":
        from peers import run_smac

        return run_smac(base, seed, budget, workdir)
    if sampler == "syne-tune":
        from peers import run_syne_tune

        return run_syne_tune(base, seed, budget, workdir)
    storage = open_storage(f"sqlite:///{workdir}/{sampler}-{pruner}-{space}-{seed}.db")
    # a fixed name: Hyperband assigns trials to brackets by hashing the study name
    study_name = f"{sampler}-{pruner}-{seed}"
    if pruner in PLAIN_PRUNERS:  # as the user writes it: defaults, the study seed only
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=PLAIN_PRUNERS[pruner](),
        )
    else:
        study = optuna.create_study(study_name=study_name, storage=storage, direction="minimize")
        study.sampler = make_sampler(spec, name=sampler, seed=seed, worker=0, n_existing=0)
        study.pruner = make_pruner(spec, name=pruner, config=fixed)
        if spec.sampler.baseline_first and space == "hpo":  # as hpo.session.open_study does
            study.enqueue_trial(baseline_params(spec, sets))
    if space == "hand" and (name.endswith("/baseline-first") or name == "tpe+sha/hand-space"):
        study.enqueue_trial(hand_baseline(spec.baseline_config(sets)))
    if space == "hand":
        objective = PlainObjective(base, by_step=pruner not in PLAIN_PRUNERS)
    else:
        objective = Objective(
            spec, sets=sets, target=10**9, checkpoint_root=workdir / f"ckpt-{study_name}"
        )
    start = time.perf_counter()
    study.optimize(objective, catch=(TrialFailed,), callbacks=[StopAtBudget(budget)])
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
        "config": chosen_config(study.best_trial),
    }


def with_spec_sets(spec: StudySpec, spec_sets: dict[str, str]) -> StudySpec:
    """lr_sweep with its sampler and pruner settings changed: {"pruner.reduction_factor": "4"}
    (values as YAML reads them), checked as a study file's would be."""
    data = spec.model_dump()
    for key, value in spec_sets.items():
        section, _, field = key.partition(".")
        if section not in ("sampler", "pruner") or not field or value == "":
            raise ValueError(f"{key}={value}: expected sampler.FIELD=VALUE or pruner.FIELD=VALUE")
        data[section][field] = yaml.safe_load(value)
    try:
        return StudySpec.model_validate(data)
    except pydantic.ValidationError as e:  # its first error, in one line
        err = e.errors()[0]
        raise ValueError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def row_name(name: str, spec_sets: dict[str, str]) -> str:
    """The row's name, with the settings it changed: tpe+sha[pruner.reduction_factor=4]."""
    changed = ",".join(f"{k}={v}" for k, v in spec_sets.items())
    return f"{name}[{changed}]" if changed else name


def chosen_config(trial: optuna.trial.FrozenTrial) -> dict:
    """The config the study's best trial trained: hpo's record, or the plain objective's."""
    return trial.user_attrs.get("config") or TrialRecord.of(trial).manifest["config"]


def run_ray_tune(base: TrainConfig, seed: int, budget: int, workdir: Path) -> dict:
    """Ray Tune as its documentation's Optuna + ASHA examples write it, one trial at a time on
    a local Ray of one CPU; stopped at `budget` steps as the Optuna studies are."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    space = {
        "optimizer": tune.choice(OPTIMIZERS),
        **{
            name: (tune.loguniform if log else tune.uniform)(low, high)
            for name, (low, high, log) in HAND_FLOATS.items()
        },
        "schedule": tune.choice(SCHEDULES),
    }
    stopper = BudgetStopper(budget)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_parameters(_ray_trainable, base=base.to_dict()),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="val_loss",
                mode="min",
                search_alg=OptunaSearch(seed=seed),
                scheduler=ASHAScheduler(),
                num_samples=-1,
                max_concurrent_trials=1,
            ),
            run_config=tune.RunConfig(
                storage_path=str(workdir / "ray"), name=f"ray-{seed}", stop=stopper, verbose=0
            ),
        )
        start = time.perf_counter()
        results = tuner.fit()
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
    # the ResultGrid lists trials in the order Tune made them; one that failed before its
    # first report has no history
    trials = [r for r in results if "steps" in r.metrics_dataframe]
    curve, best, steps, chosen = [], float("inf"), 0, None
    for r in trials:
        history = r.metrics_dataframe
        steps += int(history["steps"].max())
        # as the Optuna rows count only complete trials: a trial ASHA stopped is left out
        # (Ray tells Optuna it completed, with its value at the stopping rung)
        ran_to_the_end = history["steps"].max() >= base.train.max_steps
        if ran_to_the_end and history["val_loss"].min() < best:
            best, chosen = float(history["val_loss"].min()), r.config
        curve.append((steps, best))
    return {
        "curve": curve,
        "best": best,
        "wall_s": wall,
        "train_s": 0.0,  # not kept: no overhead column for Ray
        "trials": len(trials),
        "config": base.with_overrides(hand_overrides(chosen)).to_dict(),
    }


def _ray_trainable(config: dict, base: dict) -> None:
    """A Tune function trainable: val loss at each evaluation (ASHA counts reports)."""
    import torch
    from ray import tune

    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(base).with_overrides(hand_overrides(config))

    def report(step: int, metrics: dict[str, float]) -> None:
        tune.report({"val_loss": metrics["val/loss"], "steps": step})

    try:
        train(cfg, report=report)
    except DivergedError as e:
        tune.report({"val_loss": e.loss, "steps": e.step})


class BudgetStopper(Stopper):
    """Tune's experiment stopper once the trials before the running one have trained `budget`
    steps in all: as StopAtBudget, the trial that crosses the budget ends as it would have
    (trials run one at a time; the next one is stopped at its first report)."""

    def __init__(self, budget: int) -> None:
        self.budget, self.steps = budget, {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.steps[trial_id] = result.get("steps", 0)
        return False

    def stop_all(self) -> bool:
        *before, _running = self.steps.values() or [0]
        return sum(before) >= self.budget


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


def merge_runs(saved: list[dict]) -> dict[str, list[dict]]:
    """Each strategy's runs in --out files read back; a strategy in several files (seed ranges
    run apart) gets its runs in the files' order."""
    results: dict[str, list[dict]] = {}
    for out in saved:
        for name, runs in out["runs"].items():
            results.setdefault(name, []).extend(runs)
    return results


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float:
    return float(steps_to_reach_each(curve, np.array([target]))[0])


def steps_to_reach_each(curve: list[tuple[int, float]], targets: np.ndarray) -> np.ndarray:
    """Steps after which a best-so-far curve first reached each target (inf: never)."""
    targets = np.asarray(targets, dtype=float)
    if not curve:
        return np.full(targets.shape, np.inf)
    steps = np.array([s for s, _ in curve], dtype=float)
    best = np.array([b for _, b in curve], dtype=float)
    if np.any(best[1:] > best[:-1]):  # not np.diff: inf - inf where a curve starts at inf
        raise ValueError("a best-so-far curve cannot rise")
    # best is non-increasing, so the points still above a target come first
    above = np.searchsorted(-best, -targets, side="left")
    return np.where(above < len(steps), steps[np.minimum(above, len(steps) - 1)], np.inf)


def startup_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import hpo.run"], check=True)
    return time.perf_counter() - start


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def test_losses(config: dict, n: int, workdir: Path) -> list[dict]:
    """`config` trained on n fresh seeds, scored as hpo.validate scores (the best checkpoint on
    the test split): its rows of test and val metrics."""
    gpt = load_trainable(BUILTIN_ENTRY)
    config = gpt.resolve(flatten(config))
    out = []
    for i in range(n):
        seeded = gpt.seeded(config, SEED_BASE + i)
        job = Job(
            "winner", seeded, SEED_BASE + i, "", str(workdir), BUILTIN_ENTRY, "val/loss", True
        )
        out.append(run_job(job)[1])
    return out


def _run(task: tuple) -> tuple[str, int, dict]:
    name, seed, budget, workdir, corpus, spec_sets, test_seeds = task
    result = run_strategy(name, seed, budget, workdir, corpus, spec_sets)
    if test_seeds:
        scores = test_losses(result["config"], test_seeds, workdir / f"test-{name}-{seed}")
        result["test"] = statistics.mean(s["test/loss"] for s in scores)
    return name, seed, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="study seeds first-seed .. first-seed+seeds-1"
    )
    parser.add_argument(
        "--budget-trials", type=int, default=30, help="budget = this many full trials"
    )
    parser.add_argument("--corpus", default="stdlib")
    parser.add_argument(
        "--spec",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="lr_sweep's sampler/pruner settings for hpo's rows (a lever measured alone), e.g. "
        "sampler.n_startup_trials=10 pruner.reduction_factor=4; the rows are named with them",
    )
    parser.add_argument(
        "--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES)
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="studies run side by side (1 torch thread each)"
    )
    parser.add_argument("--out", type=Path, help="also write every run's curve here (JSON)")
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="instead: summarize and plot the curves of earlier --out files, merged",
    )
    parser.add_argument("--plot", type=Path, help="best-so-far against compute, as a PNG")
    parser.add_argument(
        "--reference",
        default="tpe+sha",
        help="the row the others are compared with, seed-paired (hpo's default); with "
        "--from-json any row of the files, e.g. tpe+sha[pruner.reduction_factor=4]",
    )
    parser.add_argument(
        "--test-seeds", type=int, default=0, help="score each chosen config on N fresh seeds"
    )
    parser.add_argument(
        "--alone",
        action="store_true",
        help="run only --strategies (no reference rows), write --out, summarize with --from-json",
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
    if args.from_json:
        saved = [json.loads(path.read_text()) for path in args.from_json]
        machines = {json.dumps(out["machine"], sort_keys=True) for out in saved if "machine" in out}
        if len(machines) > 1:
            # the same study seed goes another way on other CPU kernels: not seed-paired
            parser.error(f"--from-json: these files ran on different machines: {machines}")
        for path, out in zip(args.from_json, saved, strict=True):
            if "machine" not in out:
                print(f"note: {path} does not say which machine it ran on", file=sys.stderr)
        results = merge_runs(saved)
        budget = saved[0]["budget_steps"]
        if args.reference not in results:
            parser.error(f"--reference {args.reference}: not a row of these files: {list(results)}")
        if args.plot:
            plot_curves(results, budget, args.plot)
        summary = summarize(results, budget, len(results[args.reference]), args.reference)
        print(json.dumps(summary, indent=2))
        return
    # the reference rows (hpo's default, random) unless --alone: then merge with --from-json
    references = [] if args.alone else [args.reference, "random"]
    if args.reference not in STRATEGIES:
        parser.error(f"--reference {args.reference}: expected one of {list(STRATEGIES)}")
    names = list(dict.fromkeys([*references, *args.strategies]))
    budget = args.budget_trials * BENCH_SETS["train.max_steps"]
    spec_sets = dict(item.partition("=")[::2] for item in args.spec)
    # Ray runs each trial in a folder of its own: a corpus path must not depend on where
    corpus = str(Path(args.corpus).resolve()) if Path(args.corpus).exists() else args.corpus
    try:  # up front, not in each study
        with_spec_sets(load_study_spec("lr_sweep"), spec_sets)
    except ValueError as e:
        parser.error(f"--spec: {e}")
    # hpo's rows run with --spec, and say so in their names; the peers' rows have their own
    labels = {n: row_name(n, spec_sets) if STRATEGIES[n][0] in HPO_SAMPLERS else n for n in names}
    runs: dict[str, dict[int, dict]] = {labels[name]: {} for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        tasks = [
            (name, seed, budget, Path(tmp), corpus, spec_sets, args.test_seeds)
            for seed in range(args.first_seed, args.first_seed + args.seeds)
            for name in names
        ]
        # Ray's row starts a local Ray per study: in this process, one at a time
        if args.jobs == 1 or any(STRATEGIES[n][0] == "ray-optuna" for n in names):
            done = map(_run, tasks)
        else:
            ctx = multiprocessing.get_context("spawn")
            pool = ctx.Pool(args.jobs, initializer=_init_worker, initargs=(1,))
            done = pool.imap_unordered(_run, tasks)
        for name, seed, r in done:
            runs[labels[name]][seed] = r
            test = f", test {r['test']:.4f}" if "test" in r else ""
            print(
                f"seed {seed} {labels[name]:>24}: best {r['best']:.4f}{test} "
                f"after {r['trials']} trials, {r['wall_s']:.0f}s",
                file=sys.stderr,
            )
            if args.out:  # after every study: a long run stopped part-way keeps what it did
                _write_runs(args.out, budget, runs)
    results = {name: [by_seed[s] for s in sorted(by_seed)] for name, by_seed in runs.items()}
    if args.alone:
        return
    if args.plot:
        plot_curves(results, budget, args.plot)
    summary = summarize(results, budget, args.seeds, labels[args.reference])
    print(json.dumps(summary, indent=2))


def _write_runs(path: Path, budget: int, runs: dict[str, dict[int, dict]]) -> None:
    """The seeds every strategy has finished, so that --from-json merges this file with a run of
    the remaining seeds (--first-seed); "seeds" says which."""
    complete = sorted(set.intersection(*(set(by_seed) for by_seed in runs.values())))
    results = {name: [by_seed[s] for s in complete] for name, by_seed in runs.items()}
    out = {"budget_steps": budget, "seeds": complete, "machine": machine(), "runs": results}
    path.write_text(json.dumps(out))


def machine() -> dict:
    """Where the studies ran. A study's values depend on the CPU's kernels (AVX2 and AVX-512 differ
    in the last bits, and a pruning decision can flip on those): --from-json pairs seeds only
    between files from one machine."""
    env = environment()  # what a trial's manifest records of the same
    return {
        "cpu": device_name(torch.device("cpu")),
        "cpu_capability": env["cpu_capability"],
        "torch": env["torch"],
    }


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


def summarize(results: dict[str, list[dict]], budget: int, seeds: int, reference: str) -> dict:
    """Each strategy's row; `reference` (hpo's default) against each of the others."""
    startup = startup_seconds()
    hpo = results[reference]
    rows = {}
    for name, runs in results.items():
        # against same-seed random search, when the files merged hold its runs
        randoms = results.get("random")
        fractions = (
            [
                steps_to_reach(run["curve"], baseline["best"]) / budget
                for run, baseline in zip(runs, randoms, strict=True)
            ]
            if randoms
            else []
        )
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
            "compute_to_match_random_final": (
                round(statistics.median(fractions), 3) if fractions else None
            ),
            "overhead_share": round(statistics.median(overhead), 4) if overhead else None,
        }
        tested = all("test" in r for r in runs)
        if tested:
            row["median_test"] = round(statistics.median(r["test"] for r in runs), 4)
        if name != reference:
            # hpo's compute to first reach this strategy's median final best, seed by seed
            reach = [steps_to_reach(r["curve"], median_best) / budget for r in hpo]
            row["hpo_compute_to_match_median_final"] = round(statistics.median(reach), 3)
            # how far that median can move with other seeds; null: a bound beyond the budget
            row["hpo_compute_to_match_median_final_ci"] = [
                round(end, 3) if math.isfinite(end) else None for end in median_interval(reach)
            ]
            if seeds >= 2:
                row["hpo_minus_this"] = _paired(hpo, runs, "best")
                if tested and all("test" in r for r in hpo):
                    row["hpo_minus_this_test"] = _paired(hpo, runs, "test")
        rows[name] = row
    return {
        "budget_steps": budget,
        "seeds": seeds,
        "startup_s": round(startup, 2),
        "strategies": rows,
    }


def _paired(hpo: list[dict], runs: list[dict], key: str) -> dict:
    """hpo's default minus this strategy, seed by seed (hpo.validation.stats)."""
    paired = compare_paired([r[key] for r in hpo], [r[key] for r in runs])
    return {k: paired[k] for k in ("mean_diff", "ci_low", "ci_high", "p_value")}


if __name__ == "__main__":
    main()
