"""The adapter between an Optuna trial and the trainer: sample, train, report, record.

The trial's value is the best value of the study's metric over the run's evaluations; every
evaluation is reported to the pruner. What the trial leaves in storage is its record
(hpo.record): written when it starts (who runs it, the values derived from its parameters)
and when it ends (speed, size, steps, stop reason, manifest; for a failure, why). The retry of
a crashed trial resumes from its last checkpoint.

A diverged trial is PRUNED, not FAIL: it reports a value worse than any healthy run's at the
step it blew up, so that TPE (which ignores failed trials) learns to avoid its region.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

import search_spaces
from hpo import noise
from hpo import record as records
from hpo.budget import equal_compute, resource, tokens_per_step
from hpo.devices import gpu_share
from hpo.manifest import result_manifest, write_manifest
from hpo.record import TrialRecord
from hpo.storage import STORAGE_ERRORS, exception_chain, first_line, storage_failure
from hpo.study_spec import StudySpec
from hpo.tracking import Tracker
from trainers import (
    DivergedError,
    OutOfMemoryError,
    StopTraining,
    TrainConfig,
    TrainResult,
    UsageError,
    train,
)
from trainers.data import Data, load_data

log = logging.getLogger(__name__)

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts
IN_PLAY = (*COUNTED, TrialState.RUNNING, TrialState.WAITING)  # done or on their way


class SurplusTrialError(Exception):
    """Two workers raced for the last slot; this trial would overshoot the target."""


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
            except UsageError as e:  # a sampled config this trainer or corpus cannot run
                fail(trial, records.INVALID_CONFIG, str(e))
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

    def _trial(self, trial: optuna.Trial) -> float:
        if _in_play_before(trial) >= self.target:
            fail(trial, records.SURPLUS, "surplus: the target was reached by other workers")
            raise SurplusTrialError("target already reached")
        overrides = search_spaces.suggest(trial, self.spec.search_space)
        # sampled values last: what the trial records as its params is what trains (a --set
        # on a tuned key is refused up front, and could not win here anyway)
        base = self.spec.train_config(self.sets)
        # Optuna has no public view of a running trial's inherited values and system attrs
        frozen = trial.study._storage.get_trial(trial._trial_id)
        # an out-of-memory retry comes with its own record, and so does a re-evaluation
        enqueued = TrialRecord.of(frozen)
        cfg = equal_compute(base.with_overrides(overrides), base)
        if enqueued.reevaluates is not None:
            # the config its trial trained, with another seed (hpo.noise); the record shows
            # the seed among the derived values
            cfg = noise.reevaluation_config(trial.study, enqueued, fallback=cfg)
            overrides["train.seed"] = cfg.train.seed
        ckpt, retry_of = self._checkpoint_for(trial, frozen)
        record = TrialRecord.starting(
            trial.params,
            overrides,
            worker=f"{socket.gethostname()}:{os.getpid()}",
            gpu=self.gpu,
            alone=enqueued.alone,
            retry_of=retry_of if retry_of is not None else enqueued.retry_of,
            reevaluates=enqueued.reevaluates,
            seed_index=enqueued.seed_index,
            max_steps=cfg.train.max_steps,
            max_tokens=cfg.train.max_steps * tokens_per_step(cfg),
        )
        records.write(trial, record)
        metric = self.spec.objective.metric
        self.tracker.start_trial(trial, cfg, metric=metric, direction=self.spec.objective.direction)
        already_reported = set(frozen.intermediate_values)  # a retry inherits its origin's
        tuner_s = [0.0]  # time inside train() spent on the pruner and storage, not on training

        def report(step: int, metrics: dict[str, float]) -> None:
            self.tracker.log(step, metrics)  # never raises: a failing tracker turns itself off
            start, at = time.perf_counter(), resource(step, cfg, base)
            if at not in already_reported:
                trial.report(metrics[metric], at)
            prune = trial.should_prune()
            tuner_s[0] += time.perf_counter() - start
            if prune:
                raise StopTraining("pruned")

        try:
            with gpu_share(self.gpu, alone=record.alone):
                result = train(cfg, report=report, checkpoint_dir=ckpt, data=self._load_data(cfg))
        except DivergedError as e:
            steps = {"steps": e.step, "tokens": e.step * tokens_per_step(cfg)}
            fail(trial, records.DIVERGED, str(e), record=record, **steps)
            if resource(e.step, cfg, base) not in already_reported:
                trial.report(self._diverged_value(e, cfg), resource(e.step, cfg, base))
            raise optuna.TrialPruned(str(e)) from None
        except OutOfMemoryError as e:
            fail(trial, records.OUT_OF_MEMORY, str(e), record=record)
            self._retry_alone(trial, record)
            raise
        record = finished_record(record, cfg, result, tuner_s=tuner_s[0])
        records.write(trial, record)
        self.tracker.log_manifest(record.manifest)
        write_manifest(ckpt, record.manifest)  # beside the checkpoints: the folder says it all
        if result.stop_reason == "pruned":
            raise optuna.TrialPruned(f"pruned at step {result.steps}")
        values = [row[metric] for row in result.history]
        return self.spec.objective.best(values)

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

    def _diverged_value(self, e: DivergedError, cfg: TrainConfig) -> float:
        return diverged_value(e, self.spec, self._load_data(cfg))

    def _checkpoint_for(
        self, trial: optuna.Trial, frozen: optuna.trial.FrozenTrial
    ) -> tuple[Path, int | None]:
        """An empty folder, or, for the retry of a trial whose worker died, that trial's folder
        (moved, so its last checkpoint is where training resumes), and the trial it retries."""
        ckpt = checkpoint_dir(self.checkpoint_root, trial.number)
        shutil.rmtree(ckpt, ignore_errors=True)  # a leftover of an older study of the same name
        history = frozen.system_attrs.get("retry_history", [])  # set by storage.RetryCrashedTrial
        if not history:
            return ckpt, None
        origin = checkpoint_dir(self.checkpoint_root, history[-1])
        if origin.is_dir():
            os.replace(origin, ckpt)  # a rename within one folder: atomic
        else:
            log.warning(
                "trial %d retries trial %d, whose checkpoint %s is gone: starting at step 0",
                *(trial.number, history[-1], origin),
            )
        return ckpt, history[-1]

    def _load_data(self, cfg: TrainConfig) -> Data:
        return data_for(cfg)


def finished_record(
    record: TrialRecord, cfg: TrainConfig, result: TrainResult, *, tuner_s: float
) -> TrialRecord:
    """The record of a trial whose training ended (by its budget, patience or the pruner)."""
    return dataclasses.replace(
        record,
        resumed_from_step=result.resumed_from,
        stop_reason=result.stop_reason,
        steps=result.steps,
        tokens=result.tokens,
        best_step=result.best_step,
        tokens_per_s=round(result.tokens_per_s, 1),
        n_params=result.n_params,
        wall_time_s=round(result.wall_time_s, 3),
        tuner_time_s=round(tuner_s, 3),
        metrics=result.metrics,
        manifest=result_manifest(cfg, result),
    )


_DATA: dict[str, Data] = {}


def data_for(cfg: TrainConfig) -> Data:
    """The tokenized splits `cfg` trains on, loaded once per process (by every trial of a
    worker, Optuna's or Ray's)."""
    key = repr((cfg.data, cfg.model.block_size))
    if key not in _DATA:
        _DATA[key] = load_data(cfg.data, block_size=cfg.model.block_size)
    return _DATA[key]


def diverged_value(e: DivergedError, spec: StudySpec, data: Data) -> float:
    """What a diverged trial reports: the divergence limit in the metric's units, worse than any
    run that did not blow up (for TPE, a pruned trial ranks by its step, then by this value)."""
    nats = e.limit if e.limit is not None else e.loss
    if spec.objective.metric == "val/bpb":
        nats /= math.log(2) * data.bytes_per_token["val"]
    return nats if spec.objective.minimize else -nats


def checkpoint_dir(root: Path, number: int) -> Path:
    return root / f"trial_{number}"


def clean_checkpoints(study: optuna.Study, root: Path) -> None:
    """Keep the best trial's checkpoint (and the best one on its mean over seeds), those of
    running trials, and those of crashed trials whose retry has not started yet (it resumes
    from them)."""
    if not root.is_dir():
        return
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    pending_retry = {
        t.system_attrs["retry_history"][-1]
        for t in trials.values()
        if t.state == TrialState.WAITING and t.system_attrs.get("retry_history")
    }
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
        trial.study._storage.remove_session()
        try:
            fail(trial, records.INTERRUPTED, "interrupted (Ctrl-C or SIGTERM)")
            return
        except STORAGE_ERRORS:
            if attempt == 2:
                raise


def _interrupt_behind(e: BaseException) -> bool:
    return any(isinstance(c, KeyboardInterrupt) for c in exception_chain(e))


def _in_play_before(trial: optuna.Trial) -> int:
    trials = trial.study.get_trials(deepcopy=False, states=IN_PLAY)
    return sum(t.number < trial.number for t in trials)
