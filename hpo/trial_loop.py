"""Where trials run: one worker's loop (in this process, or in each of N spawned ones), and the
supervision of those processes.

A worker runs trials until the study holds its target of finished trials. When the last slots
are taken by other workers' running trials, it waits for them rather than leave: a worker that
died leaves a trial that goes silent, is failed and queued again (hpo.storage), and a waiting
worker runs that retry.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

# a spawned worker is a process of its own: it ends through the doors' one error path
from hpo.cli.command import run_cli
from hpo.errors import EXIT_INTERRUPTED, StudyFailedError
from hpo.objective import (
    COUNTED,
    IN_PLAY,
    Objective,
    SurplusTrialError,
    TrialFailed,
    clean_checkpoints,
)
from hpo.plan import WorkerPlan
from hpo.progress import Progress
from hpo.record import DIVERGED, SURPLUS, TrialRecord
from hpo.reevaluation import Reevaluations
from hpo.storage import (
    GRACE_PERIOD_S,
    fail_crashed_trials,
    lost_storage,
    open_storage,
    storage_failure,
)
from hpo.strategy import make_pruner, make_sampler
from hpo.tracking import make_tracker

POLL_INTERVAL_S = 2.0
MAX_CONSECUTIVE_FAILURES = 5  # a worker whose every trial fails stops instead of looping forever


def quiet_optuna(verbose: bool) -> None:
    """Optuna logs each failed trial's traceback as a warning; hpo prints one line per trial
    with its reason instead, and --verbose brings Optuna's log back."""
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)


def supervise(plan: WorkerPlan, study: optuna.Study, progress: Progress) -> BaseException | None:
    """Run the plan's workers (this process, or N spawned ones) to the end. Returns what ended
    the run early (Ctrl-C, a study that cannot go on), for the caller to raise once its summary
    is out, or None."""
    failure: BaseException | None = None
    try:
        try:
            if plan.n_workers == 1:
                # this process's CUDA_VISIBLE_DEVICES stays: its cuda:0 is the first listed
                gpu = plan.placement.gpu_of(0) if plan.placement is not None else None
                work(replace(plan, gpu=gpu), progress=progress)
            else:
                _run_processes(plan, study, progress)
        except (KeyboardInterrupt, StudyFailedError) as e:
            failure = e
        progress.update(study, study.get_trials(deepcopy=False))
    finally:
        progress.close()
    return failure


def work(plan: WorkerPlan, progress: Progress | None = None) -> None:
    """One worker: run trials until the study holds `plan.target` finished trials."""
    quiet_optuna(plan.verbose)
    torch.set_num_threads(plan.threads)
    study = _open(plan)
    spec = plan.study_spec
    root = Path(plan.checkpoint_root)
    tracker = make_tracker(plan.tracking)
    objective = Objective(
        spec,
        sets=plan.sets,
        target=plan.target,
        checkpoint_root=root,
        tracker=tracker,
        gpu=plan.gpu,
        shared_gpu=plan.shares_gpu,
    )
    streak = FailureStreak()
    deadline = time.monotonic() + plan.timeout if plan.timeout else None
    seeds = Reevaluations(plan)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        streak.add(trial)
        fail_crashed_trials(study)
        if not plan.keep_checkpoints:  # the disk a study takes stays bounded as it goes
            clean_checkpoints(study, root)
        if _count(study, IN_PLAY) >= plan.target or streak.hopeless:
            study.stop()
        # back to the loop, which re-evaluates the incumbent if that is due, or stops
        if seeds.enabled and trial.state == TrialState.COMPLETE:
            study.stop()
        if progress is not None:
            progress.update(study, study.get_trials(deepcopy=False))

    waited = False
    while _count(study, COUNTED) < plan.target:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        if seeds.should_stop(study):
            break
        if seeds.run_due(study):
            continue
        if _count(study, IN_PLAY) < plan.target or _count(study, (TrialState.WAITING,)):
            # a trial's own failure is recorded on it; the worker goes on to the next one
            catch = (TrialFailed, SurplusTrialError)
            study.optimize(objective, timeout=left, catch=catch, callbacks=[after_trial])
            streak.raise_if_hopeless()
            continue
        # the remaining slots are other workers' running trials
        if not waited:
            print(
                "waiting for running trials of other workers (one whose worker died is "
                f"retried after {GRACE_PERIOD_S}s of silence)",
                file=sys.stderr,
            )
            waited = True
        time.sleep(POLL_INTERVAL_S)
        fail_crashed_trials(study)
        if progress is not None:
            progress.update(study, study.get_trials(deepcopy=False))
    # the target is reached: the last incumbent still gets its seeds, within the same share
    while (deadline is None or time.monotonic() < deadline) and seeds.run_due(study):
        pass


class FailureStreak:
    """This worker's trials that failed or diverged in a row. A diverged trial is pruned (so
    that the sampler learns from it), yet a run of them says what a run of failures says: the
    space or the settings are wrong."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def add(self, trial: optuna.trial.FrozenTrial) -> None:
        record = TrialRecord.of(trial)
        failed = trial.state == TrialState.FAIL and record.stop_reason != SURPLUS
        if failed or record.stop_reason == DIVERGED:
            self.reasons.append(record.fail_reason or "failed")
        else:
            self.reasons.clear()

    @property
    def hopeless(self) -> bool:
        return len(self.reasons) >= MAX_CONSECUTIVE_FAILURES

    def raise_if_hopeless(self) -> None:
        if self.hopeless:
            raise StudyFailedError(
                f"the last {len(self.reasons)} trials all failed or diverged "
                f"({self.reasons[-1]}); check the search space and trainer settings"
            )


def _open(plan: WorkerPlan) -> optuna.Study:
    """The study with this worker's sampler and pruner; dead workers' trials failed first."""
    study = optuna.load_study(study_name=plan.study_name, storage=open_storage(plan.url))
    fail_crashed_trials(study)  # failed, and retried from their checkpoints
    spec = plan.study_spec
    study.sampler = make_sampler(
        spec, name=plan.sampler, seed=plan.seed, worker=plan.index, n_existing=len(study.trials)
    )
    study.pruner = make_pruner(spec, name=plan.pruner, config=spec.fixed_config(plan.sets))
    return study


def _count(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def _worker_process(plan: WorkerPlan) -> None:
    """A spawned worker: its errors take the commands' one path (one line, an exit code)."""
    if plan.gpu is not None:
        # before anything touches CUDA: the worker's trials train on its "cuda:0"
        os.environ["CUDA_VISIBLE_DEVICES"] = plan.gpu
    # tqdm's default lock is a multiprocessing semaphore, which a worker killed with SIGKILL
    # would leave for the parent's resource tracker to warn about; a worker needs no such lock
    tqdm.set_lock(threading.RLock())
    signal.signal(signal.SIGINT, _interrupt_once)
    sys.exit(run_cli(lambda: _work_in_process(plan), interrupted=None))


def _interrupt_once(signum: int, frame: object) -> None:
    """A worker's first Ctrl-C (or SIGTERM) stops it; the next ones (a terminal's Ctrl-C and
    the parent's forwarded one both arrive) must not cut short the recording of its trial."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _work_in_process(plan: WorkerPlan) -> int:
    signal.signal(signal.SIGTERM, _interrupt_once)  # run_cli set its own: one is enough here
    try:
        work(plan)
    except Exception as e:
        lost = storage_failure(e)
        if lost is None:
            raise
        raise StudyFailedError(f"worker {plan.index}: {lost_storage(plan.url, lost)}") from e
    return 0


def _run_processes(plan: WorkerPlan, study: optuna.Study, progress: Progress) -> None:
    ctx = multiprocessing.get_context("spawn")  # no forked CUDA or database handles
    gpus = [plan.placement.gpu_of(i) if plan.placement else None for i in range(plan.n_workers)]
    procs = [
        ctx.Process(target=_worker_process, args=(replace(plan, index=plan.index + i, gpu=gpu),))
        for i, gpu in enumerate(gpus)
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
        failed = _unclean_exits(procs)
        if failed and _count(study, (TrialState.RUNNING,)):  # said only where it is so
            how = ", ".join(f"worker {i} {exit_description(c)}" for i, c in failed.items())
            print(
                f"{how} after Ctrl-C instead of stopping cleanly; its running trial is "
                f"retried after {GRACE_PERIOD_S}s of silence when the study resumes",
                file=sys.stderr,
            )
        raise
    failed = _unclean_exits(procs)
    if not failed:
        return
    how = ", ".join(f"worker {i} {exit_description(code)}" for i, code in failed.items())
    if _count(study, COUNTED) >= plan.target:  # the others finished its trials
        print(f"{how}; the other workers took its trials over", file=sys.stderr)
        return
    raise StudyFailedError(
        f"{how}; their trials are retried from their checkpoints when the study resumes "
        "(rerun the same command)"
    )


def _unclean_exits(procs: list) -> dict[int, int | None]:
    """Each worker that neither finished nor stopped on Ctrl-C: its exit code (None: alive)."""
    return {i: p.exitcode for i, p in enumerate(procs) if p.exitcode not in (0, EXIT_INTERRUPTED)}


def exit_description(code: int | None) -> str:
    """'was killed by SIGKILL' for a signal, 'exited with code 1' (its error line is above),
    'is still running' for a worker that has not exited."""
    if code is None:
        return "is still running"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code} (its error is above)"
