"""`hpo.run --backend ray`: check, connect, run (or restore) the Ray experiment, report."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune

from hpo import run
from hpo.errors import HPOError
from hpo.objective import COUNTED, IN_PLAY, clean_checkpoints
from hpo.progress import Progress, summary
from hpo.raytune.cluster import Timing, connect, disconnect
from hpo.raytune.options import RayOptions, check_options
from hpo.raytune.recorder import Driver
from hpo.raytune.trainable import TrialSetup, run_trial
from hpo.raytune.tuner import new_tuner
from hpo.storage import masked
from hpo.study_spec import StudySpec
from trainers import UsageError


def ray_main(args: argparse.Namespace) -> int:
    """`hpo.run --backend ray`: check everything, connect, then tune. Returns the exit code."""
    signal.signal(signal.SIGTERM, _sigterm_as_sigint)  # Tune stops cleanly on SIGINT only
    # the driver sends the heartbeats itself (Driver.heartbeat)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    started = time.time()
    try:
        spec, opts = check_options(args)
        connect(opts)
        study, wargs = run._prepare(args)
    except (HPOError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        disconnect()
        return 2
    except KeyboardInterrupt:
        disconnect()
        return 130
    try:
        return _tune(args, spec, opts, study, wargs, started)
    finally:
        disconnect()


def _sigterm_as_sigint(signum: int, frame: Any) -> None:
    os.kill(os.getpid(), signal.SIGINT)


def _tune(
    args: argparse.Namespace,
    spec: StudySpec,
    opts: RayOptions,
    study: optuna.Study,
    wargs: run.WorkerArgs,
    started: float,
) -> int:
    metric, direction = spec.objective.metric, spec.objective.direction
    experiment = _experiment_name(study.study_name)
    path = f"{opts.storage_path.rstrip('/')}/{experiment}"
    restoring = tune.Tuner.can_restore(path)
    if not restoring:
        _fail_leftovers(study)
    setup = TrialSetup(
        spec=spec.to_json(), sets=wargs.sets, threads=max(1, int(opts.cpu)), direction=direction
    )
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in COUNTED for t in trials)
    print(
        f"study {wargs.study_name!r} in {masked(wargs.url)}: {done}/{wargs.target} trials done; "
        f"Ray Tune ({_where(opts)}): {wargs.sampler} + {opts.scheduler}, "
        f"{opts.cpu:g} CPU{f' + {opts.gpu:g} GPU' if opts.gpu else ''} per trial\n"
        f"watch it: optuna-dashboard {wargs.url}",
        file=sys.stderr,
    )
    progress = Progress(wargs.target, trials, metric=metric, enabled=not args.no_progress)
    driver = Driver(
        study,
        metric=metric,
        direction=direction,
        experiment=experiment,
        checkpoint_root=Path(wargs.checkpoint_root),
        keep_all=args.keep_checkpoints,
        progress=progress,
        mutations=opts.mutations,
    )
    Driver.current = driver
    trainable = tune.with_parameters(run_trial, setup=setup)
    code = 0
    try:
        if restoring:
            print(f"restoring the interrupted Ray experiment {path}", file=sys.stderr)
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True)
            tuner.fit()
            code = _after_fit(driver, study, experiment)
        remaining = wargs.target - len(study.get_trials(deepcopy=False, states=IN_PLAY))
        if code == 0 and remaining > 0:
            _remove_experiment(path)
            tuner = new_tuner(spec, opts, study, wargs, trainable, experiment, remaining, args)
            tuner.fit()
            code = _after_fit(driver, study, experiment)
    except KeyboardInterrupt:
        code = 130
    finally:
        progress.update(study, study.get_trials(deepcopy=False))
        progress.close()
        Driver.current = None
    if code == 0:
        _remove_experiment(path)  # finished: its checkpoints are no longer needed
    if not args.keep_checkpoints:
        clean_checkpoints(study, Path(wargs.checkpoint_root))
    print(summary(study, target=wargs.target, wall_time_s=time.time() - started), file=sys.stderr)
    if driver.first_start is not None and Timing.init_start and Timing.init_end:
        print(
            f"ray: start-up {driver.first_start - Timing.init_start:.1f}s from ray.init to the "
            f"first trial running (ray.init {Timing.init_end - Timing.init_start:.1f}s)",
            file=sys.stderr,
        )
    if code == 130:
        print(
            "interrupted: unfinished trials keep their checkpoints; rerun the same command to "
            "restore the Ray experiment and continue",
            file=sys.stderr,
        )
    return code


def _after_fit(driver: Driver, study: optuna.Study, experiment: str) -> int:
    """130 when Tune was interrupted: trials of this experiment are left unfinished."""
    unfinished = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get("ray.experiment") == experiment
    ]
    return 130 if unfinished else 0


def _where(opts: RayOptions) -> str:
    return f"cluster {opts.address}" if opts.address else "local"


def _experiment_name(study_name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in study_name)


def _remove_experiment(path: str) -> None:
    if "://" not in path:
        shutil.rmtree(path, ignore_errors=True)


def _fail_leftovers(study: optuna.Study) -> None:
    """Trials of an earlier Ray driver that is gone and whose experiment cannot be restored."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("backend") == "ray":
            study._storage.set_trial_user_attr(t._trial_id, "stop_reason", "interrupted")
            study._storage.set_trial_user_attr(
                t._trial_id, "fail_reason", "interrupted: its Ray experiment is gone"
            )
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
