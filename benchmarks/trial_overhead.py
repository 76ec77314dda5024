"""The fixed cost of a trial outside training: ask, sample the space, report each evaluation
and check the pruner, record what the trial was, tell. Side by side in one run, on hpo's SQLite
storage (WAL, synchronous=NORMAL, heartbeats), with a synthetic objective (no training):

  - per-field: the record written the way hpo did before the typed record, a user attribute per
    field (worker, each derived value, then 13 outcome fields): about 18 commits per trial;
  - record:    hpo.record, one attribute written when the trial starts and once when it ends.

    python benchmarks/trial_overhead.py [--trials 200] [--rounds 3]

Prints the median milliseconds per trial of each, and their ratio.

With --vs CHECKOUT it measures instead what a whole trial costs the Optuna engine around the
trainable (hpo.objective: sample, record, the trainable behind the seam, report, prune check,
checkpoints, manifest, tell), on the smoke study cut to two steps of training, for this
checkout and another one (a git worktree of an older commit), each in processes of its own,
alternating round by round; and the same for the in-process fake trainable of the tests (no
torch), the floor of a trial's cost:

    git worktree add /tmp/before <commit>
    python benchmarks/trial_overhead.py --vs /tmp/before [--trials 40] [--rounds 5]
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
    study.pruner = make_pruner(spec, name="hyperband", config=spec.fixed_config())
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


HERE = Path(__file__).resolve().parents[1]
# run in a checkout's own folder: milliseconds per trial of the Optuna objective on a tiny trial
OBJECTIVE_TRIAL = """
import json, sys, tempfile, time, warnings
from pathlib import Path
import optuna
warnings.filterwarnings("ignore")
optuna.logging.set_verbosity(optuna.logging.ERROR)
from hpo.objective import Objective
from hpo.storage import open_storage
from hpo.strategy import make_sampler
from hpo.study_spec import load_study_spec
n, study = int(sys.argv[1]), sys.argv[2]
spec = load_study_spec(study)
sets = {"train.max_steps": "2", "train.eval_interval": "1", "train.eval_batches": "1"}
if study != "smoke":
    sets = {}
with tempfile.TemporaryDirectory() as tmp:
    s = optuna.create_study(study_name="o", storage=open_storage(f"sqlite:///{tmp}/o.db"))
    s.sampler = make_sampler(spec, name="tpe", seed=0, worker=0, n_existing=0)
    objective = Objective(spec, sets=sets, target=10**9, checkpoint_root=Path(tmp) / "ckpt")
    s.optimize(objective, n_trials=2)  # warm: the corpus tokenized, the imports done
    start = time.perf_counter()
    s.optimize(objective, n_trials=n)
    print(json.dumps(1000 * (time.perf_counter() - start) / n))
"""
FAKE_STUDY = """description: the tests' fake trainable (no torch), a trial's floor
search_space: {"tests.fakes:suggest": {}}
trainer: {entry: "tests.fakes:quadratic", x: 0.5, train.max_steps: 20, train.eval_interval: 10}
"""


def objective_ms(checkout: Path, trials: int, study: str = "smoke") -> float:
    """Milliseconds per trial through `checkout`'s Optuna objective, in a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "HPO_RUNS_DIR": tempfile.mkdtemp()}
    out = subprocess.run(
        [sys.executable, "-c", OBJECTIVE_TRIAL, str(trials), study],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def versus(other: Path, trials: int, rounds: int) -> dict:
    times: dict[str, list[float]] = {"this": [], "other": [], "fake": []}
    with tempfile.TemporaryDirectory() as tmp:
        fake = Path(tmp) / "fake.yaml"
        fake.write_text(FAKE_STUDY)
        for r in range(rounds):
            order = [("this", HERE), ("other", other)]
            for name, checkout in order if r % 2 == 0 else reversed(order):
                times[name].append(objective_ms(checkout, trials))
            times["fake"].append(objective_ms(HERE, trials, str(fake)))
    medians = {name: statistics.median(ms) for name, ms in times.items()}
    ratios = [a / b for a, b in zip(times["this"], times["other"], strict=True)]
    return {
        "this": str(HERE),
        "other": str(other),
        "trials_per_round": trials,
        "rounds": rounds,
        "ms_per_trial": {name: [round(x, 1) for x in ms] for name, ms in times.items()},
        "median_ms_per_trial": {name: round(ms, 1) for name, ms in medians.items()},
        "this / other, per round": [round(x, 3) for x in ratios],
        "this / other (median)": round(statistics.median(ratios), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vs", type=Path, metavar="CHECKOUT", help="see the module's docstring")
    args = parser.parse_args()
    if args.vs is not None:
        print(json.dumps(versus(args.vs.resolve(), args.trials, args.rounds), indent=2))
        return
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
