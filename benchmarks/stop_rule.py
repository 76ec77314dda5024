"""hpo's stop rule (gains below seed noise) against the full budget and Optuna's Terminator.

    python benchmarks/stop_rule.py --seeds 10 --budget-trials 60 --test-seeds 3 --jobs 2

For each study seed, one noise-aware study of hpo's default search (benchmarks/noise_aware.py's
setting: incumbents re-evaluated with 2 more seeds within 15% of the compute) runs to the full
budget. On the same study, replayed in the order its runs finished, each rule is asked after
every run whether it would have stopped there:
  - hpo: `hpo.noise.gains_below_noise` (what `--stop-below-noise` checks between trials);
  - Optuna's Terminator (deprecated in 4.9, still in optuna 5.0), as its documentation writes
    it for objectives without cross-validation: EMMREvaluator with MedianErrorEvaluator; its
    default RegretBoundEvaluator, given hpo's measured seed noise as a StaticErrorEvaluator
    (the default CrossValidationErrorEvaluator needs cross-validation scores this trainer does
    not have); and BestValueStagnationEvaluator. Each at its default min_n_trials (20
    completed trials) and at 10.
The winner at a rule's stop is the best mean over seeds of the runs finished by then (the same
selection for every rule, so that only the stopping differs); it and the full budget's winner
are trained on --test-seeds fresh seeds (hpo.validate's seeds and test split). Reported per
rule: how often it stopped, the compute it saved, and the test loss lost against the full
budget, seed-paired (hpo.validation.stats).
"""

from __future__ import annotations

import statistics
import sys
import warnings
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noise_aware import parser, run_all, tune
from search_efficiency import BENCH_SETS, test_losses

from hpo import noise
from hpo.record import TrialRecord
from hpo.validation.stats import compare_paired

warnings.filterwarnings("ignore", category=FutureWarning)  # optuna.terminator is deprecated
optuna.logging.set_verbosity(optuna.logging.ERROR)


def terminators(noise_sd: float) -> dict[str, object]:
    from optuna.terminator import (
        BestValueStagnationEvaluator,
        EMMREvaluator,
        MedianErrorEvaluator,
        RegretBoundEvaluator,
        StaticErrorEvaluator,
        Terminator,
    )

    out = {}
    for n in (20, 10):
        emmr = EMMREvaluator()
        out[f"terminator-emmr-{n}"] = Terminator(
            improvement_evaluator=emmr,
            error_evaluator=MedianErrorEvaluator(emmr),
            min_n_trials=n,
        )
        out[f"terminator-regret+noise-{n}"] = Terminator(
            improvement_evaluator=RegretBoundEvaluator(),
            error_evaluator=StaticErrorEvaluator(noise_sd),
            min_n_trials=n,
        )
        out[f"terminator-stagnation-{n}"] = Terminator(
            improvement_evaluator=BestValueStagnationEvaluator(), min_n_trials=n
        )
    return out


def stops(study: optuna.Study) -> dict[str, dict]:
    """For each rule: the index of the run after which it stops (None: never), its compute."""
    seeds_study = noise.find_seeds_study(study)
    runs = noise.runs_of(study, seeds_study)
    final = noise.estimate_runs(runs, minimize=True)
    # the Terminator sees the search trials only, as a user's study holds them
    finished = sorted(
        (t for t in study.get_trials() if t.state.is_finished()), key=lambda t: t.datetime_complete
    )
    rules = terminators(final.sd or 0.0)
    out: dict[str, dict] = {name: {"after": None} for name in ["hpo", *rules]}
    search_seen = 0
    for i in range(1, len(runs) + 1):
        prefix = runs[:i]
        if out["hpo"]["after"] is None:
            decision = noise.gains_below_noise(prefix, minimize=True)
            if decision is not None and decision.stop:
                out["hpo"]["after"] = i
        if prefix[-1].reevaluation:
            continue
        search_seen += 1
        view = optuna.create_study(direction="minimize")
        view.add_trials(finished[:search_seen])
        for name, rule in rules.items():
            if out[name]["after"] is None and rule.should_terminate(view):
                out[name]["after"] = i
    total = sum(r.tokens for r in runs)
    for o in out.values():
        i = o["after"] or len(runs)
        prefix = runs[:i]
        o["share"] = sum(r.tokens for r in prefix) / total
        o["winner"] = noise.estimate_runs(prefix, minimize=True).best
    out["full"] = {"after": len(runs), "share": 1.0, "winner": final.best}
    return out


def one(args: tuple[int, int, int, str]) -> dict:
    seed, budget, test_seeds, folder = args
    torch.set_num_threads(1)
    workdir = Path(folder)
    workdir.mkdir(parents=True, exist_ok=True)
    tune(seed, True, budget, workdir)
    study = optuna.load_study(
        study_name=f"study-{seed}", storage=f"sqlite:///{workdir}/aware-{seed}.db"
    )
    rules = stops(study)
    trials = study.get_trials(deepcopy=False)
    tested: dict[int, float] = {}
    for o in rules.values():
        n = o["winner"]
        if n not in tested:
            config = TrialRecord.of(trials[n]).manifest["config"]
            scores = test_losses(config, test_seeds, workdir / f"test-{seed}")
            tested[n] = statistics.mean(s["test/loss"] for s in scores)
        o["test"] = tested[n]
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    return {"seed": seed, "trials": len(trials), "complete": complete, "rules": rules}


def main() -> None:
    p = parser(budget_trials=60, out="stop_rule.json")
    p.add_argument("--folder", default="stop_rule_studies", help="where the studies are kept")
    args = p.parse_args()
    budget = args.budget_trials * BENCH_SETS["train.max_steps"]
    work = [(s, budget, args.test_seeds, args.folder) for s in range(args.seeds)]
    summarize(run_all(one, work, jobs=args.jobs, out=args.out))


def summarize(rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: r["seed"])
    full = [r["rules"]["full"]["test"] for r in rows]
    print(f"{len(rows)} study seeds; completed trials per study: {[r['complete'] for r in rows]}")
    for name in rows[0]["rules"]:
        if name == "full":
            continue
        fired = sum(r["rules"][name]["after"] is not None for r in rows)
        shares = [r["rules"][name]["share"] for r in rows]
        test = [r["rules"][name]["test"] for r in rows]
        lost = compare_paired(test, full)
        print(
            f"{name}: stopped in {fired}/{len(rows)}; compute used median "
            f"{statistics.median(shares):.2f} (saved {1 - statistics.mean(shares):.2f} on "
            f"average); test loss lost {lost['mean_diff']:+.4f} "
            f"[{lost['ci_low']:+.4f}, {lost['ci_high']:+.4f}], p = {lost['p_value']:.3g}"
        )


if __name__ == "__main__":
    main()
