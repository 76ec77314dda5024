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
from hpo.manifest import study_manifest
from hpo.objective import COUNTED, IN_PLAY, Objective, clean_checkpoints
from hpo.progress import Progress, summary
from hpo.replay import replay_main
from hpo.storage import (
    GRACE_PERIOD_S,
    fail_crashed_trials,
    masked,
    open_storage,
    runs_dir,
    storage_url,
)
from hpo.strategy import make_pruner, make_sampler
from hpo.study_spec import (
    PRUNERS,
    SAMPLERS,
    SCHEDULERS,
    TRACKERS,
    StudySpec,
    load_study_spec,
)
from hpo.tracking import Tracking, make_tracker, resolve_tracking
from trainers import TrainerError, UsageError, parse_sets

POLL_INTERVAL_S = 2.0
RAY_ONLY = ("address", "scheduler", "cpus_per_trial", "gpus_per_trial", "max_concurrent",
            "ray_storage")  # fmt: skip
MAX_CONSECUTIVE_FAILURES = 5  # a worker whose every trial fails stops instead of looping forever


class TooManyFailuresError(Exception):
    pass


@dataclass
class WorkerArgs:
    """Everything a worker process needs (picklable, for spawned processes)."""

    spec: dict[str, Any]  # the validated study spec (StudySpec.to_json), as stored on the study
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
    tracking: Tracking = field(default_factory=Tracking)  # each worker builds its own tracker


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
    # hpo.worker gives each machine's workers their own sampler seeds (see make_sampler)
    how.add_argument("--worker-offset", type=int, default=0, help=argparse.SUPPRESS)
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
    where.add_argument(
        "--tracking",
        choices=TRACKERS,
        help="also log each trial to W&B (offline without an API key) or MLflow "
        "(default: the study's, none)",
    )
    where.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db); "
        "W&B: folder for its run files (default: $WANDB_DIR or runs/)",
    )
    again = p.add_argument_group("reproduce a trial")
    again.add_argument(
        "--replay",
        type=int,
        metavar="TRIAL",
        help="rerun trial TRIAL of --study from its manifest and compare its metrics "
        "(exit 0: they match, 1: they differ)",
    )
    again.add_argument(
        "--tolerance",
        type=float,
        help="relative difference allowed by --replay (default: 0 on CPU, 1e-2 on a GPU)",
    )
    ray = p.add_argument_group("Ray Tune backend (hpo/raytune/)")
    ray.add_argument(
        "--backend",
        choices=("optuna", "ray"),
        default="optuna",
        help="who runs the trials (default: optuna)",
    )
    ray.add_argument(
        "--address",
        help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start a local Ray)",
    )
    ray.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        help="default: the study's ray.scheduler, else the pruner's counterpart",
    )
    ray.add_argument("--cpus-per-trial", type=float, help="default: the study's (1)")
    ray.add_argument(
        "--gpus-per-trial",
        type=float,
        help="default: the study's (0); 0.25 packs 4 trials on a GPU",
    )
    ray.add_argument("--max-concurrent", type=int, help="default: as many as resources allow")
    ray.add_argument(
        "--ray-storage",
        metavar="PATH_OR_URI",
        help="Ray's experiment state and checkpoints (default: runs/ray; "
        "on several machines a shared folder or s3://...)",
    )
    return p  # fmt: skip


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (docker stop, a preempted node) ends a run like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.replay is not None:
        return replay_main(args)
    if args.backend == "ray":
        from hpo.raytune import ray_main  # imports Ray only when asked for

        return ray_main(args)
    ray_only = [f"--{k.replace('_', '-')}" for k in RAY_ONLY if getattr(args, k) is not None]
    if ray_only:
        print(f"error: {ray_only[0]} needs --backend ray", file=sys.stderr)
        return 2
    try:
        study, wargs = _prepare(args)
    except (HPOError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tracker = make_tracker(wargs.tracking)  # a failure warns once, and workers track nothing
    opened = tracker.open_study(study, study.user_attrs["hpo.manifest"])
    wargs = replace(wargs, tracking=opened or Tracking())

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
    where = tracker.close_study(study)  # MLflow: best values on the study's run; W&B: sync
    if where:
        print(where, file=sys.stderr)
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
    tracking = resolve_tracking(
        args.tracking or spec.tracking.backend,
        uri=args.tracking_uri or spec.tracking.uri,
        project=spec.tracking.project,
        study=name,
    )
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
    sampler = args.sampler or spec.sampler.name
    pruner = args.pruner or spec.pruner.name
    seed = args.seed if args.seed is not None else spec.sampler.seed
    study.set_user_attr("hpo.search", {"sampler": sampler, "pruner": pruner, "seed": seed})
    study.set_user_attr(
        "hpo.manifest",  # what started the latest run of the study (each trial has its own)
        study_manifest(spec=spec.to_json(), sets=sets, sampler=sampler, pruner=pruner, seed=seed),
    )
    _remember_last_study(name, url, spec.path)
    wargs = WorkerArgs(
        spec=spec.to_json(),
        study_name=name,
        url=url,
        sets=sets,
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        target=target,
        n_workers=args.workers,
        index=args.worker_offset,
        timeout=args.timeout,
        checkpoint_root=str(runs_dir() / name / "checkpoints"),
        threads=max(1, (os.cpu_count() or 1) // args.workers),
        tracking=tracking,
    )
    return study, wargs


def _work(w: WorkerArgs, progress: Progress | None = None) -> None:
    """One worker: run trials until the study holds `target` finished trials.

    When the last slots are taken by other workers' running trials, it waits for them rather
    than leave: a worker that died leaves a trial that goes silent, is failed and queued again
    (hpo.storage.fail_crashed_trials), and a waiting worker runs that retry.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(w.threads)
    spec = StudySpec(**w.spec)
    storage = open_storage(w.url)
    study = optuna.load_study(study_name=w.study_name, storage=storage)
    fail_crashed_trials(study)  # trials of dead workers: failed, retried from their checkpoints
    study.sampler = make_sampler(
        spec,
        name=w.sampler,
        seed=w.seed,
        n_workers=w.n_workers,
        worker=w.index,
        n_existing=len(study.trials),
    )
    study.pruner = make_pruner(spec, name=w.pruner, cfg=spec.train_config(w.sets))
    deadline = time.monotonic() + w.timeout if w.timeout else None
    root = Path(w.checkpoint_root)
    failures: list[str] = []  # this worker's consecutive failed trials

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failed = trial.state == TrialState.FAIL and trial.user_attrs.get("stop_reason") != "surplus"
        failures[:] = [*failures, trial.user_attrs.get("fail_reason", "failed")] if failed else []
        fail_crashed_trials(study)
        if _in_play(study) >= w.target or len(failures) >= MAX_CONSECUTIVE_FAILURES:
            study.stop()
        if progress is not None:
            progress.update(study, study.get_trials(deepcopy=False))

    objective = Objective(
        spec, sets=w.sets, target=w.target, checkpoint_root=root, tracker=make_tracker(w.tracking)
    )
    waited = False
    while _counted(study) < w.target:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        if _in_play(study) < w.target or _waiting(study):
            study.optimize(
                objective,
                timeout=left,
                catch=(TrainerError,),
                callbacks=[after_trial],
                gc_after_trial=False,
            )
            if len(failures) >= MAX_CONSECUTIVE_FAILURES:
                raise TooManyFailuresError(
                    f"the last {len(failures)} trials all failed ({failures[-1]}); "
                    "check the search space and trainer settings"
                )
        else:  # the remaining slots are other workers' running trials
            if not waited:
                print(
                    f"waiting for running trials of other workers (one whose worker died is "
                    f"retried after {GRACE_PERIOD_S}s of silence)",
                    file=sys.stderr,
                )
                waited = True
            time.sleep(POLL_INTERVAL_S)
            fail_crashed_trials(study)
            if progress is not None:
                progress.update(study, study.get_trials(deepcopy=False))


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
        ctx.Process(target=_worker_main, args=(replace(w, index=w.index + i),), daemon=False)
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


def _count(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return len(study._storage.get_all_trials(study._study_id, deepcopy=False, states=states))


def _in_play(study: optuna.Study) -> int:
    return _count(study, IN_PLAY)


def _counted(study: optuna.Study) -> int:
    return _count(study, COUNTED)


def _waiting(study: optuna.Study) -> int:
    return _count(study, (TrialState.WAITING,))


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
