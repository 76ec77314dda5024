"""The fixed cost of a trial outside training: ask, sample the space, report each evaluation
and check the pruner, record what the trial was, tell. Side by side in one run, on hpo's SQLite
storage (WAL, synchronous=NORMAL, heartbeats), with a synthetic objective (no training):

  - per-field: the record written the way hpo did before the typed record, a user attribute per
    field (worker, each derived value, then 13 outcome fields): about 18 commits per trial;
  - record:    hpo.record, one attribute written when the trial starts and once when it ends.

    python benchmarks/trial_overhead.py [--trials 200] [--rounds 3]

Prints the median milliseconds per trial of each, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings

import optuna
from optuna.exceptions import ExperimentalWarning

import search_spaces
from hpo.record import TrialRecord, write
from hpo.storage import open_storage
from hpo.strategy import make_pruner, make_sampler
from hpo.study_spec import load_study_spec

warnings.filterwarnings("ignore", category=ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.ERROR)

# what a finished trial carried: the same values for both writers
OUTCOME = {
    "stop_reason": "max_steps",
    "steps": 600,
    "max_steps": 600,
    "tokens": 460800,
    "max_tokens": 460800,
    "best_step": 600,
    "tokens_per_s": 20000.0,
    "n_params": 800000,
    "wall_time_s": 20.0,
    "tuner_time_s": 0.05,
    "metrics": {"val/loss": 2.1, "train/loss": 2.0, "val/bpb": 3.0, "lr": 1e-4},
    "manifest": {"config": {"optim": {"lr": 1e-3}}, "git": {"commit": "0" * 40}, "seeds": {}},
}


def per_field(trial: optuna.Trial, derived: dict, end: bool) -> None:
    if not end:
        trial.set_user_attr("worker", "host:1")
        for key, value in derived.items():
            trial.set_user_attr(key, value)
        return
    for key, value in OUTCOME.items():
        trial.set_user_attr("params" if key == "n_params" else key, value)


def one_record(trial: optuna.Trial, derived: dict, end: bool) -> None:
    record = TrialRecord(worker="host:1", derived=derived)
    write(trial, TrialRecord(**{**record.to_json(), **OUTCOME}) if end else record)


WRITERS = {"per-field": per_field, "record": one_record}


def run(writer: str, n_trials: int, folder: str) -> float:
    """Milliseconds per trial: ask, sample lr_sweep's space, 12 reports with pruning checks,
    the record, tell."""
    spec = load_study_spec("lr_sweep")
    storage = open_storage(f"sqlite:///{folder}/{writer}.db")
    study = optuna.create_study(study_name=writer, storage=storage)
    study.sampler = make_sampler(spec, name="tpe", seed=0, worker=0, n_existing=0)
    study.pruner = make_pruner(spec, name="hyperband", cfg=spec.train_config())
    record = WRITERS[writer]
    start = time.perf_counter()
    for i in range(n_trials):
        trial = study.ask()
        overrides = search_spaces.suggest(trial, spec.search_space)
        record(trial, {k: v for k, v in overrides.items() if k not in trial.params}, end=False)
        value = 2.0 + (i % 7) / 10
        for step in range(50, 601, 50):
            trial.report(value + 1 / step, step)
            trial.should_prune()  # the trial always goes on: every trial pays the same
        record(trial, {}, end=True)
        study.tell(trial, value)
    return 1000 * (time.perf_counter() - start) / n_trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in WRITERS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            # alternate the order so that neither always runs on a warmer machine
            for name in WRITERS if r % 2 == 0 else reversed(WRITERS):
                times[name].append(run(name, args.trials, f"{tmp}/{r}"))
    medians = {name: statistics.median(ms) for name, ms in times.items()}
    out = {
        "trials": args.trials,
        "rounds": args.rounds,
        "ms_per_trial": {name: [round(x, 1) for x in ms] for name, ms in times.items()},
        "median_ms_per_trial": {name: round(ms, 1) for name, ms in medians.items()},
        "record / per-field": round(medians["record"] / medians["per-field"], 3),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
