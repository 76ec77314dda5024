"""The adapter between an Optuna trial and the trainer: sample, train, report, record.

The trial's value is the best value of the study's metric over the run's evaluations; every
evaluation is reported to the pruner. What the trial leaves in storage: its parameters, the
derived values the trainer actually used (batch size, betas), speed, size, steps, stop reason
and a manifest; a failed trial also says why (diverged, out_of_memory, interrupted, surplus,
crashed). The retry of a crashed trial resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

import search_spaces
from hpo.manifest import trial_manifest, write_manifest
from hpo.study_spec import StudySpec
from hpo.tracking import Tracker
from trainers import DivergedError, OutOfMemoryError, StopTraining, TrainerError, train
from trainers.data import Data, load_data

log = logging.getLogger(__name__)

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts
IN_PLAY = (*COUNTED, TrialState.RUNNING, TrialState.WAITING)  # done or on their way


class SurplusTrialError(TrainerError):
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
    ) -> None:
        self.spec = spec
        self.sets = sets
        self.target = target
        self.checkpoint_root = checkpoint_root
        self.tracker = tracker or Tracker()  # W&B / MLflow run per trial; the default: none
        self._data: dict[str, Data] = {}  # tokenized splits, reused by every trial of this worker

    def __call__(self, trial: optuna.Trial) -> float:
        with self.tracker.trial(trial):  # its run ends as the trial does: complete/pruned/failed
            return self._trial(trial)

    def _trial(self, trial: optuna.Trial) -> float:
        if _in_play_before(trial) >= self.target:
            _fail(trial, "surplus", "surplus: the target was reached by other workers")
            raise SurplusTrialError("target already reached")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # who ran it
        overrides = search_spaces.suggest(trial, self.spec.search_space)
        cfg = self.spec.train_config().with_overrides(overrides).with_overrides(self.sets)
        for key, value in overrides.items():  # derived values: what the trainer really got
            if key not in trial.params:
                trial.set_user_attr(key, value)
        metric = self.spec.objective.metric
        self.tracker.start_trial(trial, cfg, metric=metric, direction=self.spec.objective.direction)
        tuner_s = [0.0]  # time inside train() spent on the pruner and storage, not on training

        def report(step: int, metrics: dict[str, float]) -> None:
            self.tracker.log(step, metrics)  # never raises: a failing tracker turns itself off
            start = time.perf_counter()
            if step not in already_reported:
                trial.report(metrics[metric], step)
            prune = trial.should_prune()
            tuner_s[0] += time.perf_counter() - start
            if prune:
                raise StopTraining("pruned")

        frozen = trial.study._storage.get_trial(trial._trial_id)
        ckpt = self._checkpoint_for(trial, frozen)
        already_reported = set(frozen.intermediate_values)  # a retry inherits its origin's
        try:
            result = train(
                cfg,
                report=report,
                checkpoint_dir=ckpt,
                data=self._load_data(cfg),
            )
        except DivergedError as e:
            _fail(trial, "diverged", str(e), steps=e.step)
            raise
        except OutOfMemoryError as e:
            _fail(trial, "out_of_memory", str(e))
            raise
        except KeyboardInterrupt:
            _fail(trial, "interrupted", "interrupted (Ctrl-C or SIGTERM)")
            raise

        if result.resumed_from:
            trial.set_user_attr("resumed_from_step", result.resumed_from)
        trial.set_user_attr("stop_reason", result.stop_reason)
        trial.set_user_attr("steps", result.steps)
        trial.set_user_attr("max_steps", cfg.train.max_steps)
        trial.set_user_attr("best_step", result.best_step)
        trial.set_user_attr("tokens_per_s", round(result.tokens_per_s, 1))
        trial.set_user_attr("params", result.n_params)
        trial.set_user_attr("wall_time_s", round(result.wall_time_s, 3))
        trial.set_user_attr("tuner_time_s", round(tuner_s[0], 3))
        trial.set_user_attr("metrics", result.metrics)
        manifest = trial_manifest(cfg, result)
        trial.set_user_attr("manifest", manifest)
        self.tracker.log_manifest(manifest)
        write_manifest(ckpt, manifest)  # beside the checkpoints: the trial's folder says it all
        if result.stop_reason == "pruned":
            raise optuna.TrialPruned(f"pruned at step {result.steps}")
        values = [row[metric] for row in result.history]
        return min(values) if self.spec.objective.direction == "minimize" else max(values)

    def _checkpoint_for(self, trial: optuna.Trial, frozen: optuna.trial.FrozenTrial) -> Path:
        """An empty folder, or, for the retry of a trial whose worker died, that trial's folder
        (moved, so its last checkpoint is where training resumes)."""
        ckpt = checkpoint_dir(self.checkpoint_root, trial.number)
        shutil.rmtree(ckpt, ignore_errors=True)  # a leftover of an older study of the same name
        history = frozen.system_attrs.get("retry_history", [])  # set by storage.RetryCrashedTrial
        if history:
            origin = checkpoint_dir(self.checkpoint_root, history[-1])
            trial.set_user_attr("retry_of", history[-1])
            if origin.is_dir():
                os.replace(origin, ckpt)  # a rename within one folder: atomic
            else:
                log.warning(
                    "trial %d retries trial %d, whose checkpoint %s is gone: starting at step 0",
                    trial.number,
                    history[-1],
                    origin,
                )
        return ckpt

    def _load_data(self, cfg) -> Data:
        key = repr((cfg.data, cfg.model.block_size))
        if key not in self._data:
            self._data[key] = load_data(cfg.data, block_size=cfg.model.block_size)
        return self._data[key]


def checkpoint_dir(root: Path, number: int) -> Path:
    return root / f"trial_{number}"


def clean_checkpoints(study: optuna.Study, root: Path) -> None:
    """Keep the best trial's checkpoint (for hpo.validate), those of running trials, and those
    of crashed trials whose retry has not started yet (it resumes from them)."""
    if not root.is_dir():
        return
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    pending_retry = {
        t.system_attrs["retry_history"][-1]
        for t in trials.values()
        if t.state == TrialState.WAITING and t.system_attrs.get("retry_history")
    }
    try:
        best = study.best_trial.number
    except ValueError:  # no completed trial yet
        best = None
    for path in root.glob("trial_*"):
        number = int(path.name.removeprefix("trial_"))
        trial = trials.get(number)
        keep = number == best or number in pending_retry
        if not keep and trial is not None and trial.state.is_finished():
            shutil.rmtree(path, ignore_errors=True)


def _in_play_before(trial: optuna.Trial) -> int:
    storage, study_id = trial.study._storage, trial.study._study_id
    trials = storage.get_all_trials(study_id, deepcopy=False, states=IN_PLAY)
    return sum(t.number < trial.number for t in trials)


def _fail(trial: optuna.Trial, reason: str, message: str, **attrs: Any) -> None:
    trial.set_user_attr("stop_reason", reason)
    trial.set_user_attr("fail_reason", message)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
