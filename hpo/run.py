"""Tune a study: python -m hpo.run --study lr_sweep --trials 100

--trials is the total: a rerun of the same command resumes the study and tops it up to that
many finished (complete or pruned) trials. --workers N runs N processes on this machine on one
study; workers on other machines join by running the same command against the same --storage.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from hpo.errors import HPOError
from hpo.objective import COUNTED, IN_PLAY, Objective, clean_checkpoints
from hpo.progress import Progress, summary
from hpo.storage import masked, open_storage, runs_dir, storage_url
from hpo.strategy import make_pruner, make_sampler
from hpo.study_spec import PRUNERS, SAMPLERS, load_study_spec
from trainers import TrainerError, UsageError, parse_sets

POLL_INTERVAL_S = 2.0
MAX_CONSECUTIVE_FAILURES = 5  # a worker whose every trial fails stops instead of looping forever


class TooManyFailuresError(Exception):
    pass


@dataclass
class WorkerArgs:
    """Everything a worker process needs (picklable, for spawned processes)."""

    study: str  # name or path of the study spec
    study_name: str
    url: str
    sets: dict[str, Any]
    sampler: str
    pruner: str
    seed: int
    target: int
    n_workers: int
    index: int = 0
    timeout: float | None = None
    checkpoint_root: str = ""
    threads: int = field(default_factory=lambda: torch.get_num_threads())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hpo.run",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_argument_group("what to tune")
    what.add_argument(
        "--study", default="lr_sweep", help="a study in studies/ or a YAML path (default: lr_sweep)"
    )
    what.add_argument("--study-name", help="name in the storage (default: the study's file name)")
    what.add_argument(
        "--trials", type=int, help="total finished trials to reach (default: the study's)"
    )
    what.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    what.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a trainer setting (repeatable)",
    )
    what.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda", "mps"],
        help="shorthand for --set train.device=...",
    )
    how = p.add_argument_group("how to search")
    how.add_argument("--sampler", choices=SAMPLERS, help="default: the study's (tpe)")
    how.add_argument("--pruner", choices=PRUNERS, help="default: the study's (hyperband)")
    how.add_argument("--seed", type=int, help="sampler seed (default: the study's, 0)")
    how.add_argument(
        "--workers", type=int, default=1, help="parallel worker processes on this machine"
    )
    where = p.add_argument_group("where results go")
    where.add_argument(
        "--storage", help="database URL (default: $HPO_STORAGE or sqlite:///runs/hpo.db)"
    )
    where.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every trial's checkpoint, not just the best",
    )
    where.add_argument("--no-progress", action="store_true", help="no live progress bar")
    return p  # fmt: skip


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (docker stop, a preempted node) ends a run like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study, wargs = _prepare(args)
    except (HPOError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    spec_metric = study.user_attrs["hpo.spec"]["objective"]["metric"]
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in COUNTED for t in trials)
    print(
        f"study {wargs.study_name!r} in {masked(wargs.url)}: {done}/{wargs.target} trials done; "
        f"{wargs.sampler} + {wargs.pruner}, {wargs.n_workers} worker(s)\n"
        f"watch it: optuna-dashboard {wargs.url}",
        file=sys.stderr,
    )
    progress = Progress(wargs.target, trials, metric=spec_metric, enabled=not args.no_progress)
    start, code = time.time(), 0
    try:
        if wargs.n_workers == 1:
            _work(wargs, progress=progress)
        else:
            code = _run_workers(wargs, study, progress)
    except KeyboardInterrupt:
        code = 130
    except TooManyFailuresError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    finally:
        progress.update(study, study.get_trials(deepcopy=False))
        progress.close()
    if not args.keep_checkpoints:
        clean_checkpoints(study, Path(wargs.checkpoint_root))
    print(summary(study, target=wargs.target, wall_time_s=time.time() - start), file=sys.stderr)
    if code == 130:
        print(
            "interrupted: no trial is left running; rerun the same command to continue",
            file=sys.stderr,
        )
    return code


def _prepare(args: argparse.Namespace) -> tuple[optuna.Study, WorkerArgs]:
    """Check every input, then open (or create) the study. Nothing is stored before the checks."""
    sets = parse_sets(args.set)
    if args.device:
        sets["train.device"] = args.device
    spec = load_study_spec(args.study, sets=sets)
    if args.workers < 1:
        raise HPOError(f"--workers must be at least 1, but got {args.workers}")
    if args.trials is not None and args.trials < 1:
        raise HPOError(f"--trials must be at least 1, but got {args.trials}")
    if args.timeout is not None and args.timeout <= 0:
        raise HPOError(f"--timeout must be positive, but got {args.timeout}")
    url = storage_url(args.storage)
    storage = open_storage(url)
    name = args.study_name or spec.name
    study = optuna.create_study(
        study_name=name, storage=storage, direction=spec.objective.direction, load_if_exists=True
    )
    if study.direction.name.lower() != spec.objective.direction:
        raise HPOError(
            f"study {name!r} in the storage was created to {study.direction.name.lower()}, "
            f"but the spec says {spec.objective.direction}; use another --study-name"
        )
    previous = study.user_attrs.get("hpo.sets")
    if previous is not None and previous != sets:
        logging.getLogger("hpo").warning(
            "study %r was run before with --set %s, now %s: its trials may not be comparable",
            name,
            previous,
            sets,
        )
    target = args.trials or spec.trials
    study.set_user_attr("hpo.spec", spec.to_json())
    study.set_user_attr("hpo.sets", sets)
    study.set_user_attr("hpo.target", target)
    _remember_last_study(name, url, spec.path)
    wargs = WorkerArgs(
        study=spec.path,
        study_name=name,
        url=url,
        sets=sets,
        sampler=args.sampler or spec.sampler.name,
        pruner=args.pruner or spec.pruner.name,
        seed=args.seed if args.seed is not None else spec.sampler.seed,
        target=target,
        n_workers=args.workers,
        timeout=args.timeout,
        checkpoint_root=str(runs_dir() / name / "checkpoints"),
        threads=max(1, (os.cpu_count() or 1) // args.workers),
    )
    return study, wargs


def _work(w: WorkerArgs, progress: Progress | None = None) -> None:
    """One worker: run trials until the study holds `target` finished (or running) trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(w.threads)
    spec = load_study_spec(w.study, sets=w.sets)
    storage = open_storage(w.url)
    study = optuna.load_study(study_name=w.study_name, storage=storage)
    optuna.storages.fail_stale_trials(study)  # trials of dead workers: failed, their slots freed
    study.sampler = make_sampler(
        spec,
        name=w.sampler,
        seed=w.seed,
        n_workers=w.n_workers,
        worker=w.index,
        n_existing=len(study.trials),
    )
    study.pruner = make_pruner(spec, name=w.pruner, cfg=spec.train_config(w.sets))
    if _in_play(study) >= w.target:
        return
    root = Path(w.checkpoint_root)
    failures: list[str] = []  # this worker's consecutive failed trials

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failed = trial.state == TrialState.FAIL and trial.user_attrs.get("stop_reason") != "surplus"
        failures[:] = [*failures, trial.user_attrs.get("fail_reason", "failed")] if failed else []
        if _in_play(study) >= w.target or len(failures) >= MAX_CONSECUTIVE_FAILURES:
            study.stop()
        if progress is not None:
            progress.update(study, study.get_trials(deepcopy=False))

    objective = Objective(spec, sets=w.sets, target=w.target, checkpoint_root=root)
    study.optimize(
        objective,
        timeout=w.timeout,
        catch=(TrainerError,),
        callbacks=[after_trial],
        gc_after_trial=False,
    )
    if len(failures) >= MAX_CONSECUTIVE_FAILURES:
        raise TooManyFailuresError(
            f"the last {len(failures)} trials all failed ({failures[-1]}); "
            "check the search space and trainer settings"
        )


def _worker_main(w: WorkerArgs) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _work(w)
    except KeyboardInterrupt:
        sys.exit(130)
    except TooManyFailuresError as e:
        print(f"error: worker {w.index}: {e}", file=sys.stderr)
        sys.exit(1)


def _run_workers(w: WorkerArgs, study: optuna.Study, progress: Progress) -> int:
    ctx = multiprocessing.get_context("spawn")  # no forked CUDA or database handles
    procs = [
        ctx.Process(target=_worker_main, args=(replace(w, index=i),), daemon=False)
        for i in range(w.n_workers)
    ]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(POLL_INTERVAL_S)
            progress.update(study, study.get_trials(deepcopy=False))
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reaches the workers too; forward it to any that did not get it,
        # and wait for each to mark its running trial as failed before exiting.
        time.sleep(1.0)
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGINT)
        for p in procs:
            p.join(timeout=120)
        raise
    failed = [i for i, p in enumerate(procs) if p.exitcode not in (0, 130)]
    if failed:
        print(
            f"error: worker(s) {failed} exited abnormally; see their output above", file=sys.stderr
        )
        return 1
    return 0


def _in_play(study: optuna.Study) -> int:
    return len(study._storage.get_all_trials(study._study_id, deepcopy=False, states=IN_PLAY))


def _remember_last_study(name: str, url: str, path: str) -> None:
    """So that `hpo.validate` and `hpo.analyze` default to the study run last."""
    try:
        runs_dir().mkdir(parents=True, exist_ok=True)
        (runs_dir() / "last_study.json").write_text(
            json.dumps({"study_name": name, "storage": url, "study": path})
        )
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
