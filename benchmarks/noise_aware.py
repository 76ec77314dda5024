"""Noise-aware selection against single-seed selection, at equal compute (issue 16).

    python benchmarks/noise_aware.py --seeds 10 --budget-trials 24 --test-seeds 3 --jobs 2

For each study seed, two studies of lr_sweep's default search (its sampler and pruner, the
baseline first) on search_efficiency's setting, each stopped once its runs have trained the same
number of steps (budget-trials full runs), re-evaluations included:
  - single-seed: the winner is the trial with the best value;
  - noise-aware: the incumbent and its challengers are re-evaluated with 2 more seeds within 15%
    of the compute (hpo.reevaluation, the worker's own code), the winner the best on its
    re-evaluations, compared on the seeds they share (hpo.noise).
Each winner is then trained on --test-seeds fresh seeds (hpo.validate's seeds and scoring: the
best checkpoint on the test split). Reported, seed-paired over study seeds: the test loss of the
noise-aware winner minus the single-seed one (hpo.validation.stats: mean, 95% t-interval,
permutation p),
and each winner's optimism (its mean best val loss over the fresh seeds minus the value the
study reported for it: positive when the study's value was too good).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_efficiency import BENCH_SETS, test_losses

from hpo import noise
from hpo.objective import Objective, TrialFailed
from hpo.plan import WorkerPlan
from hpo.record import TrialRecord
from hpo.reevaluation import Reevaluations
from hpo.storage import open_storage
from hpo.strategy import make_pruner, make_sampler
from hpo.study_spec import NoiseSpec, baseline_params, load_study_spec
from hpo.validation.stats import compare_paired

optuna.logging.set_verbosity(optuna.logging.WARNING)


def steps_spent(study: optuna.Study) -> int:
    seeds_study = noise.find_seeds_study(study)
    trials = study.get_trials(deepcopy=False)
    trials += seeds_study.get_trials(deepcopy=False) if seeds_study is not None else []
    return sum(TrialRecord.of(t).steps or 0 for t in trials)


def tune(seed: int, aware: bool, budget: int, workdir: Path) -> dict:
    """One study to the budget; its winner's config and reported value."""
    sets = {**BENCH_SETS, "data.corpus": "stdlib"}
    spec = load_study_spec("lr_sweep", sets=sets)
    if aware:
        spec = spec.model_copy(update={"noise": NoiseSpec(seeds=2, max_share=0.15)})
    # one name for both: Hyperband assigns brackets by hashing it, and the pair stays in step
    # until the first re-evaluation
    name = f"study-{seed}"
    label = f"{'aware' if aware else 'single'}-{seed}"
    url = f"sqlite:///{workdir}/{label}.db"
    sampler, pruner = spec.sampler.name, spec.pruner.name
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="minimize")
    study.sampler = make_sampler(spec, name=sampler, seed=seed, worker=0, n_existing=0)
    study.pruner = make_pruner(spec, name=pruner, config=spec.fixed_config(sets))
    if spec.sampler.baseline_first:  # as hpo.session.open_study does
        study.enqueue_trial(baseline_params(spec, sets))
    root = workdir / f"ckpt-{label}"
    objective = Objective(spec, sets=sets, target=10**9, checkpoint_root=root)
    plan = WorkerPlan(
        spec=spec.to_json(),
        study_name=name,
        url=url,
        sets=sets,
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        target=10**9,
        n_workers=1,
        checkpoint_root=str(root),
        threads=1,
    )
    seeds = Reevaluations(plan)

    def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # as hpo.trial_loop does: back to the loop after each completed trial
        if steps_spent(study) >= budget or (aware and trial.state.name == "COMPLETE"):
            study.stop()

    while steps_spent(study) < budget:
        if seeds.run_due(study):
            continue
        study.optimize(objective, catch=(TrialFailed,), callbacks=[after])
    trials = study.get_trials(deepcopy=False)
    if aware:
        report = noise.report(study)
        winner, value = report.best, report.mean
        extra = {"n_seeds": report.n_seeds, "sd": report.sd, "share": report.share}
    else:
        best = study.best_trial
        winner, value, extra = best.number, best.value, {}
    config = TrialRecord.of(trials[winner]).manifest["config"]
    return {
        "winner": winner,
        "value": value,
        "config": config,
        "steps": steps_spent(study),
        **extra,
    }


def one(args: tuple[int, bool, int, int, str]) -> dict:
    seed, aware, budget, test_seeds, keep = args
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        # the studies stay in --keep (for benchmarks/stop_rule.py) when it is given
        workdir = Path(keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        tuned = tune(seed, aware, budget, workdir)
        scores = test_losses(tuned["config"], test_seeds, Path(tmp) / "test")
    test = statistics.mean(s["test/loss"] for s in scores)
    val = statistics.mean(s["val/loss"] for s in scores)
    del tuned["config"]
    # optimism: how much better the study said the winner was than fresh seeds find it
    return {"seed": seed, "aware": aware, **tuned, "test": test, "optimism": val - tuned["value"]}


def parser(*, budget_trials: int, out: str) -> argparse.ArgumentParser:
    """The flags of this benchmark and of benchmarks/stop_rule.py."""
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--budget-trials", type=int, default=budget_trials)
    p.add_argument("--test-seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=out)
    return p


def run_all(one, work: list, *, jobs: int, out: str) -> list[dict]:
    """`one` over `work` in `jobs` processes, each row printed as it comes and all saved."""
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        rows = []
        for row in pool.imap_unordered(one, work):
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(out).write_text(json.dumps(rows, indent=1))
    return rows


def main() -> None:
    p = parser(budget_trials=24, out="noise_aware.json")
    p.add_argument("--keep", default="", help="a folder to keep the studies' SQLite files in")
    args = p.parse_args()
    budget = args.budget_trials * BENCH_SETS["train.max_steps"]
    work = [
        (seed, aware, budget, args.test_seeds, args.keep)
        for seed in range(args.seeds)
        for aware in (False, True)
    ]
    rows = run_all(one, work, jobs=args.jobs, out=args.out)
    by = {(r["seed"], r["aware"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    single = [by[(s, False)]["test"] for s in seeds]
    aware = [by[(s, True)]["test"] for s in seeds]
    comparison = compare_paired(aware, single)
    print(f"test loss, median: single-seed {statistics.median(single):.4f}, ", end="")
    print(f"noise-aware {statistics.median(aware):.4f}")
    print(f"noise-aware minus single-seed, seed-paired: {json.dumps(comparison)}")
    for aware_flag, label in ((False, "single-seed"), (True, "noise-aware")):
        opt = [by[(s, aware_flag)]["optimism"] for s in seeds]
        median, mean = statistics.median(opt), statistics.mean(opt)
        print(f"optimism {label}: median {median:+.4f}, mean {mean:+.4f}")


if __name__ == "__main__":
    main()
