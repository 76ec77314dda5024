"""`hpo.run --backend ray`: check, connect, run (or restore) the Ray experiment, report."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune

from hpo import noise
from hpo.errors import EXIT_INTERRUPTED
from hpo.objective import clean_checkpoints
from hpo.plan import WorkerPlan
from hpo.progress import Progress, summary
from hpo.raytune.cluster import connect, disconnect
from hpo.raytune.options import RayOptions, RayRequest, check_options
from hpo.raytune.recorder import Driver
from hpo.raytune.reevaluations import noise_setup, reevaluations
from hpo.raytune.trainable import TrialSetup, run_trial
from hpo.raytune.tuner import new_tuner
from hpo.record import INTERRUPTED, TrialRecord
from hpo.seam import ContractError
from hpo.session import RunRequest, banner, load_request, open_study
from hpo.storage import update_record
from hpo.study_spec import StudySpec


def ray_main(request: RunRequest, ray: RayRequest) -> int:
    """`hpo.run --backend ray`: check everything, connect, then tune. Returns the exit code;
    errors take the commands' one path (hpo.cli.run runs this inside hpo.cli.command.run_cli)."""
    # Tune stops cleanly on SIGINT only
    signal.signal(signal.SIGTERM, _sigterm_as_sigint)
    # the driver sends the heartbeats itself (Driver.heartbeat)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    started = time.time()
    # trials get their devices on the nodes: the driver's own may have none
    # Ray places trials (and packs them: --trials-per-gpu is a GPU fraction per trial there)
    placed = replace(request, check_device=False, workers=None, trials_per_gpu=None)
    try:
        checked = load_request(placed)
        opts = check_options(request, ray, checked.spec, checked.sets)
        ray_init = connect(opts)
        study, plan = open_study(placed, checked)
        return _tune(checked.spec, opts, study, plan, started, ray_init)
    finally:
        disconnect()


def _sigterm_as_sigint(signum: int, frame: Any) -> None:
    os.kill(os.getpid(), signal.SIGINT)


def _tune(
    spec: StudySpec,
    opts: RayOptions,
    study: optuna.Study,
    plan: WorkerPlan,
    started: float,
    ray_init: tuple[float, float],
) -> int:
    experiment = _experiment_name(study.study_name)
    path = f"{opts.storage_path.rstrip('/')}/{experiment}"
    per_trial = f"{opts.cpu:g} CPU{f' + {opts.gpu:g} GPU' if opts.gpu else ''} per trial"
    engine = f"Ray Tune ({_where(opts)}): {plan.sampler} + {opts.scheduler}, {per_trial}"
    print(banner(study, plan, engine), file=sys.stderr)
    metric = spec.objective.metric
    trials = study.get_trials(deepcopy=False)
    progress = Progress(plan.target, trials, metric=metric, enabled=opts.progress)
    driver = Driver(
        study,
        metric=metric,
        direction=spec.objective.direction,
        experiment=experiment,
        checkpoint_root=Path(plan.checkpoint_root),
        keep_all=opts.keep_checkpoints,
        progress=progress,
        mutations=opts.mutations,
        reevaluations=reevaluations(study, noise_setup(spec, plan.sets, opts)),
    )
    Driver.current = driver
    try:
        code = _fit(spec, opts, study, plan, path, driver)
        if code == 0 and driver.reevaluations is not None:
            # the last incumbent gets its seeds too, within the same share (as hpo.trial_loop does)
            elapsed = time.time() - started
            deadline = time.monotonic() - elapsed + opts.timeout if opts.timeout else None
            driver.reevaluations.finish(deadline)
    finally:
        progress.update(study, study.get_trials(deepcopy=False))
        progress.close()
        Driver.current = None
    if code == 0:
        _remove_experiment(path)  # finished: its checkpoints are no longer needed
    if not opts.keep_checkpoints:
        clean_checkpoints(study, Path(plan.checkpoint_root))
    print(summary(study, target=plan.target, wall_time_s=time.time() - started), file=sys.stderr)
    if driver.first_start is not None:
        print(
            f"ray: start-up {driver.first_start - ray_init[0]:.1f}s from ray.init to the "
            f"first trial running (ray.init {ray_init[1] - ray_init[0]:.1f}s)",
            file=sys.stderr,
        )
    if code == EXIT_INTERRUPTED:
        print(
            "interrupted: unfinished trials keep their checkpoints; rerun the same command to "
            "restore the Ray experiment and continue",
            file=sys.stderr,
        )
    if driver.contract is not None:
        raise ContractError(driver.contract)
    return code


def _fit(
    spec: StudySpec,
    opts: RayOptions,
    study: optuna.Study,
    plan: WorkerPlan,
    path: str,
    driver: Driver,
) -> int:
    """Restore an interrupted experiment of the study, if any, then top the study up with a new
    one. EXIT_INTERRUPTED when interrupted."""
    experiment = driver.experiment
    restoring = tune.Tuner.can_restore(path)
    if not restoring:
        _fail_leftovers(study)
    setup = TrialSetup(spec=spec.to_json(), sets=plan.sets, threads=max(1, int(opts.cpu)))
    trainable = tune.with_parameters(run_trial, setup=setup)
    try:
        if restoring:
            print(f"restoring the interrupted Ray experiment {path}", file=sys.stderr)
            tune.Tuner.restore(path, trainable, resume_unfinished=True).fit()
            if _after_fit(driver, study, experiment):
                return EXIT_INTERRUPTED
        # a queued trial (the baseline of sampler.baseline_first, a crashed trial's retry) is
        # one of those the searcher asks for: it takes the queue first
        started = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        remaining = plan.target - len(study.get_trials(deepcopy=False, states=started))
        if remaining > 0:
            _remove_experiment(path)
            new_tuner(spec, opts, study, plan, trainable, experiment, remaining).fit()
            return _after_fit(driver, study, experiment)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def _after_fit(driver: Driver, study: optuna.Study, experiment: str) -> int:
    """EXIT_INTERRUPTED when Tune was interrupted: trials of this experiment are left unfinished."""
    unfinished = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get("ray.experiment") == experiment
    ]
    return EXIT_INTERRUPTED if unfinished else 0


def _where(opts: RayOptions) -> str:
    return f"cluster {opts.address}" if opts.address else "local"


def _experiment_name(study_name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in study_name)


def _remove_experiment(path: str) -> None:
    if "://" not in path:
        shutil.rmtree(path, ignore_errors=True)


def _fail_leftovers(study: optuna.Study) -> None:
    """Trials of an earlier Ray driver that is gone and whose experiment cannot be restored,
    and its seed re-runs (hpo.noise), which the next driver queues again when due."""
    seeds_study = noise.find_seeds_study(study)
    for s in [study] if seeds_study is None else [study, seeds_study]:
        for t in s.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if TrialRecord.of(t).backend == "ray":
                reason = "interrupted: its Ray experiment is gone"
                update_record(s, t.number, stop_reason=INTERRUPTED, fail_reason=reason)
                s.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
