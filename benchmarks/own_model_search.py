"""The own-model example tuned by hpo's default against plain Optuna, at equal compute: a
setting lr_sweep's default was not chosen on (studies/digits.yaml: a small CNN on
scikit-learn's digits with its own training loop, accuracy maximized).

    python benchmarks/own_model_search.py --seeds 10 --first-seed 20 --budget-trials 20 \
        --test-seeds 3 --jobs 2

Per study seed, two studies of examples/digits.py's `train`, each stopped once its trials have
trained budget-trials x train.max_steps steps (the same training code and step counts):
  - hpo: the study as `python -m hpo.run --study digits --seed S` runs it (hpo's objective, the
    study's space, sampler and pruner, its baseline first);
  - optuna: plain Optuna as its PyTorch example (pytorch_simple.py) writes it:
    create_study(direction="maximize", sampler=TPESampler(seed=S)), so the default MedianPruner,
    each evaluation reported by its index (as the example reports epochs), over a hand-written
    space (search_efficiency's: one log-uniform lr for every optimizer, uniform betas,
    log-uniform weight decay, the optimizer and schedule as categories) plus the example's
    width and dropout. It returns the best val accuracy, not the last, as hpo's objective does.
Each study's best trial is trained on --test-seeds fresh seeds and scored on the test split as
hpo.validate scores it. Reported: test accuracy, hpo minus plain Optuna, paired by study seed
(hpo.validation.stats: mean, 95% t-interval, exact permutation p), and the same for the best
val accuracy the studies reported.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_efficiency import hand_written_space as optimizer_space
from search_efficiency import machine

from hpo.objective import Objective, TrialFailed
from hpo.record import TrialRecord
from hpo.seam import Run, Sink, StopTrial, execute
from hpo.storage import open_storage
from hpo.strategy import make_pruner, make_sampler
from hpo.study_spec import baseline_params, load_study_spec
from hpo.trainable import load_trainable
from hpo.validation.stats import compare_paired
from hpo.validation.validate import SEED_BASE, Job, run_job

optuna.logging.set_verbosity(optuna.logging.WARNING)
STUDY = "digits"
METRIC = "val/accuracy"


def hand_written_space(trial: optuna.Trial) -> dict:
    """search_efficiency's hand-written optimizer space, plus the example's own two knobs."""
    return {
        **optimizer_space(trial),
        "model.channels": trial.suggest_int("channels", 8, 64, log=True),
        "model.dropout": trial.suggest_float("dropout", 0.0, 0.5),
    }


class PlainObjective:
    """Optuna's PyTorch example around the digits `train`: suggest, train, report each
    evaluation by its index, prune when told, return the best val accuracy."""

    def __init__(self, fixed: dict, workdir: Path) -> None:
        self.fixed, self.workdir = fixed, workdir
        self.trainable = load_trainable(self.fixed["entry"])

    def __call__(self, trial: optuna.Trial) -> float:
        config = {**self.fixed, **hand_written_space(trial)}
        trial.set_user_attr("config", config)

        class Report(Sink):
            def report(self, run: Run, step: int, metrics: dict[str, float]) -> None:
                trial.report(metrics[METRIC], len(run.history))
                trial.set_user_attr("steps", step)
                if trial.should_prune():
                    raise StopTrial("pruned")

        run = Run(
            config,
            metric=METRIC,
            minimize=False,
            checkpoint_dir=self.workdir / f"trial_{trial.number}",
            sink=Report(),
        )
        outcome = execute(self.trainable, run)
        if outcome.stop_reason == "pruned":
            raise optuna.TrialPruned()
        return outcome.best_value


def steps_spent(study: optuna.Study) -> int:
    trials = study.get_trials(deepcopy=False)
    return sum(TrialRecord.of(t).steps or t.user_attrs.get("steps", 0) for t in trials)


def tune(arm: str, seed: int, budget: int, workdir: Path) -> dict:
    """One study of `arm` to the budget: its chosen config and best val accuracy."""
    spec = load_study_spec(STUDY)
    fixed = spec.fixed_config({})
    url = f"sqlite:///{workdir}/{arm}-{seed}.db"
    study = optuna.create_study(
        study_name=f"{arm}-{seed}", storage=open_storage(url), direction="maximize"
    )
    if arm == "hpo":  # as hpo.session.open_study makes it
        study.sampler = make_sampler(
            spec, name=spec.sampler.name, seed=seed, worker=0, n_existing=0
        )
        study.pruner = make_pruner(spec, name=spec.pruner.name, config=fixed)
        if spec.sampler.baseline_first:
            study.enqueue_trial(baseline_params(spec, {}))
        objective = Objective(spec, sets={}, target=10**9, checkpoint_root=workdir / f"ckpt-{seed}")
    else:  # as the user writes it: defaults, the study seed only
        study.sampler = optuna.samplers.TPESampler(seed=seed)
        study.pruner = optuna.pruners.MedianPruner()  # create_study's default
        objective = PlainObjective({**fixed, "entry": spec.entry}, workdir / f"plain-{seed}")

    def stop_at_budget(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if steps_spent(study) >= budget:
            study.stop()

    study.optimize(objective, catch=(TrialFailed,), callbacks=[stop_at_budget])
    best = study.best_trial
    config = TrialRecord.of(best).manifest["config"] if arm == "hpo" else best.user_attrs["config"]
    trials = study.get_trials(deepcopy=False)
    return {
        "best_val": best.value,
        "config": {k: v for k, v in config.items() if k != "entry"},
        "trials": len(trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "steps": steps_spent(study),
    }


def test_accuracy(config: dict, n: int, workdir: Path) -> float:
    """`config` on n fresh seeds (hpo.validate's), each scored on the test split at its best
    val checkpoint: the mean test accuracy."""
    entry = load_study_spec(STUDY).entry
    trainable = load_trainable(entry)
    scores = []
    for i in range(n):
        seeded = trainable.seeded(config, SEED_BASE + i)
        job = Job(
            "winner", seeded, SEED_BASE + i, "", str(workdir / f"seed{i}"), entry, METRIC, False
        )
        scores.append(run_job(job)[1]["test/accuracy"])
    return statistics.mean(scores)


def one(task: tuple[str, int, int, int]) -> dict:
    arm, seed, budget, test_seeds = task
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = tune(arm, seed, budget, Path(tmp))
        result["test"] = test_accuracy(result.pop("config"), test_seeds, Path(tmp) / "test")
    return {"arm": arm, "seed": seed, **result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=20)
    p.add_argument("--budget-trials", type=int, default=20, help="budget = this many full trials")
    p.add_argument("--test-seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("own_model_search.json"))
    args = p.parse_args()
    max_steps = load_study_spec(STUDY).fixed_config({})["train.max_steps"]
    budget = args.budget_trials * max_steps
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    work = [(arm, seed, budget, args.test_seeds) for seed in seeds for arm in ("hpo", "optuna")]
    rows = []
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for row in pool.imap_unordered(one, work):
            rows.append(row)
            print(json.dumps(row), flush=True)
            args.out.write_text(
                json.dumps({"budget_steps": budget, "machine": machine(), "rows": rows}, indent=1)
            )
    by = {(r["arm"], r["seed"]): r for r in rows}
    for key in ("test", "best_val"):
        hpo_arm = [by[("hpo", s)][key] for s in seeds]
        plain = [by[("optuna", s)][key] for s in seeds]
        median = (
            f"median hpo {statistics.median(hpo_arm):.4f}, optuna {statistics.median(plain):.4f}"
        )
        print(f"{key}: {median}")
        comparison = json.dumps(compare_paired(hpo_arm, plain))
        print(f"{key}, hpo minus plain Optuna, paired by study seed: {comparison}")


if __name__ == "__main__":
    main()
