"""Diverged trials in a wide learning-rate range: failed (invisible to TPE) against pruned with a
bad value (what hpo does), seed-paired at the same compute budget.

    python benchmarks/divergence.py [--seeds 10] [--budget-trials 16] [--lr-high 10]

lr_sweep's space with its learning-rate range widened to [1e-4, lr_high] (a user who does not
know where the optimizer blows up), on the search-efficiency benchmark's small model; TPE +
Hyperband; hpo's real objective, trainer and SQLite storage. Two policies for a trial whose
loss blows up:
  - fail:  the trial FAILs (hpo before this change). Optuna's TPE leaves failed trials out of
           its model, so it never learns where the range diverges.
  - prune: the trial reports a value worse than any healthy run's at the step it diverged and
           is pruned (hpo now); TPE ranks it with the worst.
Reported per policy, median over seeds: trials that diverged, the share of all trials they
were, and the final best val loss; then the seed-paired differences (prune - fail) with their
95% t-intervals (hpo.validation.stats).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from search_efficiency import BENCH_SETS, StopAtBudget

from hpo.objective import Objective, TrialFailed
from hpo.record import TrialRecord
from hpo.storage import open_storage
from hpo.strategy import make_pruner, make_sampler
from hpo.study_spec import load_study_spec
from hpo.validation.stats import compare_paired

warnings.filterwarnings("ignore", category=ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.ERROR)


class FailOnDivergence(Objective):
    """hpo before: a diverged trial raised, so the study recorded it FAIL."""

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return super().__call__(trial)
        except optuna.TrialPruned as e:
            if TrialRecord.of(trial).stop_reason == "diverged":
                raise TrialFailed(str(e)) from None
            raise


def run_study(policy: str, seed: int, budget: int, lr_high: float, workdir: Path) -> dict:
    spec = load_study_spec("lr_sweep", sets=BENCH_SETS)
    spec.search_space["optimizer"] = {**spec.search_space["optimizer"], "lr": [1e-4, lr_high]}
    name = f"{policy}-{seed}"
    study = optuna.create_study(
        study_name=name, storage=open_storage(f"sqlite:///{workdir}/{name}.db")
    )
    study.sampler = make_sampler(spec, name="tpe", seed=seed, worker=0, n_existing=0)
    study.pruner = make_pruner(spec, name="hyperband", config=spec.fixed_config(BENCH_SETS))
    kind = FailOnDivergence if policy == "fail" else Objective
    objective = kind(spec, sets=BENCH_SETS, target=10**9, checkpoint_root=workdir / name)
    start = time.perf_counter()
    study.optimize(objective, catch=(TrialFailed,), callbacks=[StopAtBudget(budget)])
    trials = study.get_trials(deepcopy=False)
    diverged = [t for t in trials if TrialRecord.of(t).stop_reason == "diverged"]
    complete = [t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "trials": len(trials),
        "diverged": len(diverged),
        "diverged_share": len(diverged) / len(trials),
        "best": min(complete, default=float("inf")),
        "wall_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budget-trials", type=int, default=16, help="budget: full trials")
    parser.add_argument("--lr-high", type=float, default=10.0)
    args = parser.parse_args()
    budget = args.budget_trials * BENCH_SETS["train.max_steps"]
    runs: dict[str, list[dict]] = {"fail": [], "prune": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for policy in runs:
                r = run_study(policy, seed, budget, args.lr_high, Path(tmp))
                runs[policy].append(r)
                print(f"seed {seed} {policy:>5}: {json.dumps(r)}", file=sys.stderr)
    out = {
        "budget_steps": budget,
        "lr_range": [1e-4, args.lr_high],
        "seeds": args.seeds,
        "policies": {
            policy: {
                key: round(statistics.median(r[key] for r in rs), 4)
                for key in ("trials", "diverged", "diverged_share", "best")
            }
            for policy, rs in runs.items()
        },
        "paired_prune_minus_fail": {
            key: {
                k: v
                for k, v in compare_paired(
                    [r[key] for r in runs["prune"]], [r[key] for r in runs["fail"]]
                ).items()
                if k in ("mean_diff", "ci_low", "ci_high", "p_value", "n")
            }
            for key in ("diverged", "diverged_share", "best")
        },
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
