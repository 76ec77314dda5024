"""The sampler's time per trial as a study grows to 1,000 trials (issue 15: under 50 ms).

A synthetic objective over lr_sweep's real search space (no training, so the time is the
sampler's): ask, sample the space, tell, in memory. Side by side in one run:

  - hpo:   hpo's sampler as lr_sweep makes it (TPE multivariate + group, constant liar, made
           afresh for each trial from the study seed and the trial's number);
  - optuna: TPESampler() at Optuna's defaults, what a plain Optuna user runs.

    python benchmarks/sampler_time.py [--trials 1000] [--window 100]

Prints the median milliseconds per trial over the last `window` trials of each, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings

import optuna
from optuna.exceptions import ExperimentalWarning

import search_spaces
from hpo.strategy import make_sampler
from hpo.study_spec import load_study_spec

warnings.filterwarnings("ignore", category=ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.ERROR)


def synthetic_loss(overrides: dict) -> float:
    """Smooth in the learning rate (best near 3e-3) and the schedule; a bowl TPE can find."""
    lr = overrides.get("optim.lr", 1e-3)
    return (math.log10(lr) + 2.5) ** 2 + {"cosine": 0.0, "linear": 0.1, "constant": 0.3}.get(
        overrides.get("schedule.name", "cosine"), 0.2
    )


def time_per_trial(
    sampler: optuna.samplers.BaseSampler, space: dict[str, dict], trials: int
) -> list[float]:
    study = optuna.create_study(sampler=sampler)
    seconds = []
    for _ in range(trials):
        start = time.perf_counter()
        trial = study.ask()
        overrides = search_spaces.suggest(trial, space)
        study.tell(trial, synthetic_loss(overrides))
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--window", type=int, default=100)
    args = parser.parse_args()
    spec = load_study_spec("lr_sweep")
    samplers = {
        "hpo": make_sampler(spec, name="tpe", seed=0, worker=0, n_existing=0),
        "optuna": optuna.samplers.TPESampler(seed=0),
    }
    out = {}
    for name, sampler in samplers.items():
        seconds = time_per_trial(sampler, spec.search_space, args.trials)
        out[name] = {
            "ms_per_trial_last_window": round(1000 * statistics.median(seconds[-args.window :]), 1),
            "ms_per_trial_first_100": round(1000 * statistics.median(seconds[:100]), 1),
            "total_s": round(sum(seconds), 1),
        }
    out["hpo_over_optuna"] = round(
        out["hpo"]["ms_per_trial_last_window"] / out["optuna"]["ms_per_trial_last_window"], 2
    )
    print(json.dumps({"trials": args.trials, "window": args.window, **out}, indent=2))


if __name__ == "__main__":
    main()
