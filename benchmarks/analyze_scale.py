"""hpo.analyze on a 1,000-trial study, and optuna-dashboard's study page on it.

    python benchmarks/analyze_scale.py [--trials 1000]

The trials come from a fast synthetic objective (three parameters, one that matters, learning
curves reported at ten steps, some pruned) written through the same SQLite storage hpo.run
uses, so the analysis sees what a real study would give it. Times: building the study (not
counted), the whole analysis (importance with 20 resamples, every plot as HTML and PNG, upload
to the study), and the dashboard's study API answer, cold and warm.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna

from hpo.analysis.analyze import analyze, attach
from hpo.record import TrialRecord, write
from hpo.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def build(storage: str, n: int) -> optuna.Study:
    study = optuna.create_study(
        study_name="scale",
        storage=open_storage(storage),
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=20),
    )
    rng = np.random.default_rng(0)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("optim.lr", 1e-4, 1e-1, log=True)
        trial.suggest_float("model.dropout", 0, 0.3)
        trial.suggest_categorical("optim.name", ["adamw", "adam", "sgd"])
        final = (math.log10(lr) + 2.5) ** 2 + 0.05 * rng.normal()
        for step in range(1, 11):
            trial.report(final + 1.0 / step, step * 100)
            if trial.should_prune():
                write(trial, TrialRecord(stop_reason="pruned", steps=step * 100, max_steps=1000))
                raise optuna.TrialPruned()
        write(trial, TrialRecord(stop_reason="max_steps", steps=1000, max_steps=1000))
        return final

    study.optimize(objective, n_trials=n)
    return study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/scale.db"
        t0 = time.perf_counter()
        study = build(storage, args.trials)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = Path(tmp) / "report"
        result = analyze(study, resamples=20, out=out)
        attach(study, out, (out / "summary.md").read_text())
        analysis = time.perf_counter() - t0
        port = 8799
        server = subprocess.Popen(
            [sys.executable, "-m", "hpo.dashboard", "--storage", storage, "--port", str(port)],
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}/api/studies/{study._study_id}?after=0"
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2)
                    break
                except OSError:
                    time.sleep(0.2)
            page = []
            for _ in range(3):
                t0 = time.perf_counter()
                urllib.request.urlopen(url, timeout=60).read()
                page.append(time.perf_counter() - t0)
        finally:
            server.kill()
    out = {
        "trials": args.trials,
        "pruned": result["trials"]["pruned"],
        "build_s": round(built, 1),
        "analyze_s": round(analysis, 1),
        "top_param": result["importance"][0]["param"],
        "dashboard_study_api_s": {"cold": round(page[0], 2), "warm": round(min(page[1:]), 2)},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
