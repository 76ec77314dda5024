"""Storage throughput: trials per second with 1, 4 and 8 workers on SQLite, PostgreSQL and
Optuna's journal file, with a trivial objective so that the storage is what is measured.

    python benchmarks/storage_throughput.py [--seconds 15] [--workers 1 4 8]

Each trial does what an hpo trial asks of its storage, minus the training: sample three
parameters, report five intermediate values (asking the pruner each time), set four user
attributes, finish. Workers are separate processes, as with `hpo.run --workers` or many
machines. SQLite and PostgreSQL go through hpo's own `open_storage` (WAL and heartbeats on
SQLite; pooled connections on PostgreSQL, a fresh database on the local server).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import optuna
import psycopg
from optuna.exceptions import ExperimentalWarning

from hpo.storage import open_storage

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    name = trial.suggest_categorical("optimizer", ["adamw", "sgd"])
    layers = trial.suggest_int("layers", 1, 8)
    value = lr * layers + (name == "sgd")
    for step in range(5):
        trial.report(value / (step + 1), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    for key in ("steps", "tokens_per_s", "params", "wall_time_s"):
        trial.set_user_attr(key, 1.0)
    return value


def make_storage(kind: str, where: str) -> optuna.storages.BaseStorage:
    if kind == "journal":
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(where))
    return open_storage(where)


def worker(kind: str, where: str, name: str, seconds: float, seed: int, counts) -> None:
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(
        study_name=name,
        storage=make_storage(kind, where),
        sampler=optuna.samplers.RandomSampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5),
    )
    errors = 0
    deadline = time.monotonic() + seconds
    done = 0
    while time.monotonic() < deadline:
        try:
            study.optimize(objective, n_trials=1)
            done += 1
        except Exception:  # "database is locked" and its kin: counted, not hidden
            errors += 1
    counts.put((done, errors))


def measure(kind: str, where: str, n_workers: int, seconds: float) -> dict:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=make_storage(kind, where))
    ctx = multiprocessing.get_context("spawn")
    counts = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(kind, where, name, seconds, i, counts))
        for i in range(n_workers)
    ]
    for p in procs:
        p.start()
    results = [counts.get() for _ in procs]
    for p in procs:
        p.join()
    # count what the storage holds, not what the workers believe they did
    trials = optuna.load_study(study_name=name, storage=make_storage(kind, where)).trials
    finished = sum(t.state.is_finished() for t in trials)
    return {
        "trials_per_s": round(finished / seconds, 1),
        "finished": finished,
        "errors": sum(e for _, e in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    db = f"hpo_bench_{uuid.uuid4().hex[:8]}"
    rows: dict[str, dict] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        psycopg.connect(PG_ADMIN, autocommit=True) as admin,
    ):
        admin.execute(f"CREATE DATABASE {db}")
        try:
            places = {
                "sqlite": f"sqlite:///{tmp}/bench.db",
                "postgresql": f"postgresql://postgres@127.0.0.1:5432/{db}",
                "journal": str(Path(tmp) / "journal.log"),
            }
            for kind, where in places.items():
                for n in args.workers:
                    r = measure(kind, where, n, args.seconds)
                    rows[f"{kind} x{n}"] = r
                    print(f"{kind:>10} x{n}: {r}", flush=True)
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    machine = f"{platform.processor() or platform.machine()}, {multiprocessing.cpu_count()} CPUs"
    print(json.dumps({"machine": machine, "seconds": args.seconds, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
