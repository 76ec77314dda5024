"""The Optuna engine's side of the seam: an Optuna trial -> the trainable -> the trial's value
and record.

The trial's value is the best value of the study's metric over the run's reports; every report
goes to the pruner (hpo.seam.Run). What the trial leaves in storage is its record (hpo.record):
written when it starts (who runs it, the values derived from its parameters) and when it ends
(speed, size, steps, stop reason, manifest; for a failure, why). The retry of a crashed trial
gets the crashed trial's checkpoint folder, so a function that restores resumes from its last
save.

A diverged trial is PRUNED, not FAIL: it reports a value worse than any healthy run's at the
step it blew up, so that TPE (which ignores failed trials) learns to avoid its region. A failed
trial (the function's own exception, a config it cannot run, out of memory) is recorded with
its reason and the worker goes on; a function that breaks the seam's contract stops the study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import shutil
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from hpo import noise, space
from hpo import record as records
from hpo.devices import gpu_share
from hpo.errors import StudyFailedError
from hpo.manifest import outcome_manifest, write_manifest
from hpo.record import TrialRecord
from hpo.seam import (
    ContractError,
    Diverged,
    InvalidConfig,
    Outcome,
    OutOfMemory,
    Run,
    Sink,
    StopTrial,
    disk_full,
    execute,
)
from hpo.storage import (
    STORAGE_ERRORS,
    RetryCrashedTrial,
    exception_chain,
    first_line,
    storage_failure,
    trial_id,
)
from hpo.study_spec import StudySpec
from hpo.tracking import Tracker
from hpo.trainable import SEED_KEY, Trainable, steps_of

log = logging.getLogger(__name__)

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts
IN_PLAY = (*COUNTED, TrialState.RUNNING, TrialState.WAITING)  # done or on their way


class SurplusTrialError(Exception):
    """Two workers raced for the last slot; this trial would overshoot the target."""


class TrialFailed(Exception):
    """A trial failed for a reason recorded on it (its stop and fail reasons); its worker goes
    on with the next one."""


class Objective:
    def __init__(
        self,
        spec: StudySpec,
        *,
        sets: dict[str, Any],
        target: int,
        checkpoint_root: Path,
        tracker: Tracker | None = None,
        gpu: str | None = None,
        shared_gpu: bool = False,
    ) -> None:
        self.spec = spec
        self.sets = sets
        self.target = target
        self.checkpoint_root = checkpoint_root
        self.tracker = tracker or Tracker()  # W&B / MLflow run per trial; the default: none
        self.gpu = gpu  # this worker's (hpo.devices), as CUDA_VISIBLE_DEVICES names it
        self.shared_gpu = shared_gpu  # other workers of this machine train on it too

    def __call__(self, trial: optuna.Trial) -> float:
        with self.tracker.trial(trial):  # its run ends as the trial does: complete/pruned/failed
            try:
                return self._trial(trial)
            except KeyboardInterrupt as e:  # while sampling, loading or training
                _record_interrupt(trial, e)
                raise
            except (optuna.TrialPruned, TrialFailed, SurplusTrialError, ContractError):
                raise
            except Exception as e:
                if _interrupt_behind(e):
                    # Ctrl-C inside SQLAlchemy's own cleanup surfaces as another error
                    _record_interrupt(trial, e)
                    raise KeyboardInterrupt from None
                lost = storage_failure(e)
                if lost is not None:
                    # if the storage is still away this write fails too: the trial then stays
                    # RUNNING, goes silent, and is retried as crashed when the study resumes
                    with contextlib.suppress(*STORAGE_ERRORS):
                        fail(trial, records.STORAGE_LOST, f"lost the storage ({first_line(lost)})")
                    raise
                full = disk_full(e)
                if full is not None:  # every trial would fail so: the run stops
                    raise _stop_for_disk(trial, full) from e
                # the training function's own exception: this trial failed, the study goes on
                # (--verbose: Optuna's log shows the traceback)
                fail(trial, records.ERROR, error_line(e))
                raise TrialFailed(error_line(e)) from e

    def _trial(self, trial: optuna.Trial) -> float:
        if _in_play_before(trial) >= self.target:
            fail(trial, records.SURPLUS, "surplus: the target was reached by other workers")
            raise SurplusTrialError("target already reached")
        trainable = self.spec.trainable()
        fixed = self.spec.fixed_config(self.sets)  # the study's fixed settings, --set applied
        overrides = space.suggest(trial, self.spec.search_space)
        # Optuna has no public view of a running trial's inherited values and system attrs
        frozen = trial.storage.get_trial(trial_id(trial))
        # an out-of-memory retry comes with its own record, and so does a re-evaluation
        enqueued = TrialRecord.of(frozen)
        try:
            # sampled values last: what the trial records as its params is what trains (a --set
            # on a tuned key is refused up front, and could not win here anyway)
            config = trainable.budget(trainable.resolve({**fixed, **overrides}), fixed)
        except ValueError as e:  # a sampled config this trainer cannot run
            fail(trial, records.INVALID_CONFIG, str(e))
            raise TrialFailed(str(e)) from None
        if enqueued.reevaluates is not None:
            # the config its trial trained, with another seed (hpo.noise); the record shows
            # the seed among the derived values
            config = noise.reevaluation_config(trial.study, enqueued, fallback=config)
            overrides[SEED_KEY] = config.get(SEED_KEY, 0)
        ckpt, retry_of = self._checkpoint_for(trial, frozen, enqueued)
        max_steps, tokens = steps_of(config)[0], trainable.tokens_per_step(config)
        record = TrialRecord.starting(
            trial.params,
            overrides,
            worker=f"{socket.gethostname()}:{os.getpid()}",
            gpu=self.gpu,
            alone=enqueued.alone,
            retry_of=retry_of if retry_of is not None else enqueued.retry_of,
            reevaluates=enqueued.reevaluates,
            seed_index=enqueued.seed_index,
            max_steps=max_steps,
            max_tokens=max_steps * tokens if max_steps is not None and tokens else None,
        )
        records.write(trial, record)
        metric, direction = self.spec.objective.metric, self.spec.objective.direction
        self.tracker.start_trial(trial, config, metric=metric, direction=direction)
        already_reported = set(frozen.intermediate_values)  # a retry inherits its origin's
        sink = OptunaSink(trial, trainable, config, fixed, self.tracker, already_reported)
        run = Run(
            config,
            metric=metric,
            minimize=self.spec.objective.minimize,
            checkpoint_dir=ckpt,
            sink=sink,
            trial=trial.number,
            log_dir=self.checkpoint_root.parent / "logs" / f"trial_{trial.number}",
        )
        try:
            with gpu_share(self.gpu, alone=record.alone):
                outcome = execute(trainable, run)
        except Diverged as e:
            value = e.value if e.value is not None else self.spec.objective.worst
            steps = {"steps": e.step, "tokens": e.step * tokens if tokens else None}
            fail(trial, records.DIVERGED, str(e), record=record, **steps)
            at = trainable.resource(e.step, config, fixed)
            if at not in already_reported:
                trial.report(value, at)
            raise optuna.TrialPruned(str(e)) from None
        except (OutOfMemory, torch.OutOfMemoryError) as e:
            fail(trial, records.OUT_OF_MEMORY, first_line(e), record=record)
            self._retry_alone(trial, record)
            raise TrialFailed(str(e)) from None
        except InvalidConfig as e:
            fail(trial, records.INVALID_CONFIG, str(e), record=record)
            raise TrialFailed(str(e)) from None
        except ContractError as e:  # the study stops: every trial would break it the same way
            fail(trial, records.CONTRACT, str(e), record=record)
            raise
        record = finished_record(
            record, config, outcome, trainable=trainable, entry=self.spec.entry
        )
        records.write(trial, record)
        self.tracker.log_manifest(record.manifest)
        write_manifest(ckpt, record.manifest)  # beside the checkpoints: the folder says it all
        warn_unread(overrides, outcome)
        if outcome.stop_reason == "pruned":
            raise optuna.TrialPruned(f"pruned at step {outcome.steps}")
        return outcome.best_value

    def _retry_alone(self, trial: optuna.Trial, record: TrialRecord) -> None:
        """Once more, with the GPU to itself: the trials it shared it with may have taken the
        memory it needed (hpo.devices)."""
        if self.shared_gpu and not record.alone:
            again = TrialRecord(
                retry_of=trial.number,
                alone=True,
                reevaluates=record.reevaluates,
                seed_index=record.seed_index,
            )
            records.enqueue(trial.study, trial.params, again)

    def _checkpoint_for(
        self, trial: optuna.Trial, frozen: optuna.trial.FrozenTrial, enqueued: TrialRecord
    ) -> tuple[Path, int | None]:
        """An empty folder, or, for the retry of a trial whose worker died or was interrupted
        (or ran out of memory on a shared GPU), that trial's folder (moved, so its last
        checkpoint is where training resumes), and the trial it retries."""
        ckpt = checkpoint_dir(self.checkpoint_root, trial.number)
        shutil.rmtree(ckpt, ignore_errors=True)  # a leftover of an older study of the same name
        origin_number = retried(frozen, enqueued)
        if origin_number is None:
            return ckpt, None
        origin = checkpoint_dir(self.checkpoint_root, origin_number)
        if origin.is_dir():
            os.replace(origin, ckpt)  # a rename within one folder: atomic
        else:
            log.warning(
                "trial %d retries trial %d, whose checkpoint %s is gone: starting at step 0",
                *(trial.number, origin_number, origin),
            )
        return ckpt, origin_number


class OptunaSink(Sink):
    """A run's reports to its Optuna trial: the tracker logs each, the pruner judges each at
    the step the trainable says it counts as."""

    def __init__(
        self,
        trial: optuna.Trial,
        trainable: Trainable,
        config: dict[str, Any],
        fixed: dict[str, Any],
        tracker: Tracker,
        already_reported: set[int],
    ) -> None:
        self.trial, self.trainable, self.config, self.fixed = trial, trainable, config, fixed
        self.tracker, self.already_reported = tracker, already_reported

    def report(self, run: Run, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log(step, metrics)  # never raises: a failing tracker turns itself off
        at = self.trainable.resource(step, self.config, self.fixed)
        if at not in self.already_reported:
            self.trial.report(metrics[run.metric], at)
        if self.trial.should_prune():
            raise StopTrial("pruned")


def finished_record(
    record: TrialRecord,
    config: dict[str, Any],
    outcome: Outcome,
    *,
    trainable: Trainable,
    entry: str,
) -> TrialRecord:
    """The record of a trial whose run ended (by its budget, the function, or the pruner)."""
    tokens = trainable.tokens_per_step(config)
    speed = outcome.facts.get("tokens_per_s")
    return dataclasses.replace(
        record,
        resumed_from_step=outcome.resumed_from,
        stop_reason=outcome.stop_reason,
        steps=outcome.steps,
        tokens=outcome.steps * tokens if tokens and outcome.steps is not None else None,
        best_step=outcome.best_step,
        tokens_per_s=round(speed, 1) if speed is not None else None,
        n_params=outcome.facts.get("n_params"),
        wall_time_s=round(outcome.wall_time_s, 3),
        tuner_time_s=round(outcome.tuner_time_s, 3),
        metrics=outcome.metrics,
        manifest=outcome_manifest(config, outcome, entry=entry),
    )


_WARNED: set[str] = set()


def warn_unread(overrides: dict[str, Any], outcome: Outcome) -> None:
    """Once per process: a tuned key the function never read is a space that tunes nothing
    (a typo in a key, a setting the function ignores). The root seed is hpo's to read."""
    for key in sorted(overrides.keys() - outcome.read - _WARNED - {SEED_KEY}):
        _WARNED.add(key)
        print(
            f"warning: the search space sets {key!r}, but the training function never read "
            "it: the trials differ in a value that changes nothing (check the key's name)",
            file=sys.stderr,
        )


def _stop_for_disk(trial: optuna.Trial, full: BaseException) -> StudyFailedError:
    """The trial recorded disk_full and queued to go on from its last checkpoint (whose write
    was atomic: intact) when the study resumes; the error that ends the run."""
    reason = str(full).strip().splitlines()[0]
    if isinstance(full, OSError):  # the function's own write
        reason = f"no space left on the device ({reason}): free some, or use a larger disk"
    fail(trial, records.DISK_FULL, reason)
    _queue_resume(trial)
    return StudyFailedError(
        f"{reason}; trial {trial.number} goes on from its last checkpoint when the study "
        "resumes (rerun the same command)"
    )


def error_line(e: BaseException) -> str:
    """The last line of an exception's traceback: "ZeroDivisionError: division by zero"."""
    return traceback.format_exception_only(type(e), e)[-1].strip()


def retried(t: optuna.trial.FrozenTrial, record: TrialRecord | None = None) -> int | None:
    """The trial a queued trial retries: a crashed one (hpo.storage.RetryCrashedTrial), or one
    interrupted or out of memory (its record says which); None for any other trial."""
    history = t.system_attrs.get("retry_history", [])
    if history:
        return history[-1]
    return (record or TrialRecord.of(t)).retry_of


def checkpoint_dir(root: Path, number: int) -> Path:
    return root / f"trial_{number}"


def clean_checkpoints(study: optuna.Study, root: Path) -> None:
    """Keep the best trial's checkpoint (and the best one on its mean over seeds), those of
    running trials, and those of crashed or interrupted trials whose retry has not started yet
    (it resumes from them)."""
    if not root.is_dir():
        return
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    waiting = (t for t in trials.values() if t.state == TrialState.WAITING)
    pending_retry = {retried(t) for t in waiting} - {None}
    try:
        best = {study.best_trial.number}
    except ValueError:  # no completed trial yet
        best = set()
    seeds = noise.report(study)
    if seeds is not None:
        best.add(seeds.best)  # the winner on its mean over seeds
    for path in root.glob("trial_*"):
        number = int(path.name.removeprefix("trial_"))
        trial = trials.get(number)
        keep = number in best or number in pending_retry
        if not keep and trial is not None and trial.state.is_finished():
            shutil.rmtree(path, ignore_errors=True)


def fail(
    trial: optuna.Trial,
    reason: str,
    message: str,
    *,
    record: TrialRecord | None = None,
    **fields: Any,
) -> None:
    """Record why a running trial stops (its attributes freeze once it is finished)."""
    record = record if record is not None else TrialRecord.of(trial)
    fields = {"stop_reason": reason, "fail_reason": message, **fields}
    records.write(trial, dataclasses.replace(record, **fields))


def _record_interrupt(trial: optuna.Trial, interrupt: BaseException) -> None:
    """Ctrl-C can land inside one of the trial's storage calls (a report, a pruning check).
    The interrupted statement then lives on in the interrupt's traceback, and SQLite keeps its
    connection, transaction and write lock with it: this write, and Optuna's own failing of the
    trial after it, would wait for the lock timeout and fail. So the tracebacks go first, and
    the reason is written over a fresh session."""
    for e in exception_chain(interrupt):
        e.__traceback__ = None
    gc.collect()  # frames in reference cycles hold the statement too
    # an interrupt inside SQLAlchemy's bookkeeping can spoil the next session too
    for attempt in range(3):
        trial.storage.remove_session()
        try:
            fail(trial, records.INTERRUPTED, INTERRUPTED_REASON)
            _queue_resume(trial)
            return
        except STORAGE_ERRORS:
            if attempt == 2:
                raise


INTERRUPTED_REASON = "interrupted (Ctrl-C or SIGTERM); the next run goes on from its checkpoint"


def _queue_resume(trial: optuna.Trial) -> None:
    """Queue the interrupted trial again, as a crashed one is (its reports inherited, however
    often it was interrupted before): the next run (any worker) takes it first, moves its
    checkpoint folder to the new trial and goes on from its last save. One interrupted before
    its parameters were sampled has nothing to go on from."""
    if trial.params:
        frozen = trial.storage.get_trial(trial_id(trial))
        RetryCrashedTrial(max_retry=None, inherit_intermediate_values=True)(trial.study, frozen)


def _interrupt_behind(e: BaseException) -> bool:
    return any(isinstance(c, KeyboardInterrupt) for c in exception_chain(e))


def _in_play_before(trial: optuna.Trial) -> int:
    trials = trial.study.get_trials(deepcopy=False, states=IN_PLAY)
    return sum(t.number < trial.number for t in trials)
