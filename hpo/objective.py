"""The adapter between an Optuna trial and the trainer: sample, train, report, record.

The trial's value is the best value of the study's metric over the run's evaluations; every
evaluation is reported to the pruner. What the trial leaves in storage: its parameters, the
derived values the trainer actually used (batch size, betas), speed, size, steps, stop reason
and a manifest; a failed trial also says why (diverged, out_of_memory, interrupted, surplus).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

import search_spaces
from hpo.manifest import trial_manifest
from hpo.study_spec import StudySpec
from trainers import DivergedError, OutOfMemoryError, StopTraining, TrainerError, train
from trainers.data import Data, load_data

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts
IN_PLAY = (*COUNTED, TrialState.RUNNING, TrialState.WAITING)  # done or on their way


class SurplusTrialError(TrainerError):
    """Two workers raced for the last slot; this trial would overshoot the target."""


class Objective:
    def __init__(
        self, spec: StudySpec, *, sets: dict[str, Any], target: int, checkpoint_root: Path
    ) -> None:
        self.spec = spec
        self.sets = sets
        self.target = target
        self.checkpoint_root = checkpoint_root
        self._data: dict[str, Data] = {}  # tokenized splits, reused by every trial of this worker

    def __call__(self, trial: optuna.Trial) -> float:
        if _in_play_before(trial) >= self.target:
            _fail(trial, "surplus", "surplus: the target was reached by other workers")
            raise SurplusTrialError("target already reached")
        overrides = search_spaces.suggest(trial, self.spec.search_space)
        cfg = self.spec.train_config().with_overrides(overrides).with_overrides(self.sets)
        for key, value in overrides.items():  # derived values: what the trainer really got
            if key not in trial.params:
                trial.set_user_attr(key, value)
        metric = self.spec.objective.metric
        tuner_s = [0.0]  # time inside train() spent on the pruner and storage, not on training

        def report(step: int, metrics: dict[str, float]) -> None:
            start = time.perf_counter()
            trial.report(metrics[metric], step)
            prune = trial.should_prune()
            tuner_s[0] += time.perf_counter() - start
            if prune:
                raise StopTraining("pruned")

        ckpt = checkpoint_dir(self.checkpoint_root, trial.number)
        shutil.rmtree(ckpt, ignore_errors=True)  # a leftover of an older study of the same name
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

        trial.set_user_attr("stop_reason", result.stop_reason)
        trial.set_user_attr("steps", result.steps)
        trial.set_user_attr("max_steps", cfg.train.max_steps)
        trial.set_user_attr("best_step", result.best_step)
        trial.set_user_attr("tokens_per_s", round(result.tokens_per_s, 1))
        trial.set_user_attr("params", result.n_params)
        trial.set_user_attr("wall_time_s", round(result.wall_time_s, 3))
        trial.set_user_attr("tuner_time_s", round(tuner_s[0], 3))
        trial.set_user_attr("metrics", result.metrics)
        trial.set_user_attr("manifest", trial_manifest(cfg, result))
        if result.stop_reason == "pruned":
            raise optuna.TrialPruned(f"pruned at step {result.steps}")
        values = [row[metric] for row in result.history]
        return min(values) if self.spec.objective.direction == "minimize" else max(values)

    def _load_data(self, cfg) -> Data:
        key = repr((cfg.data, cfg.model.block_size))
        if key not in self._data:
            self._data[key] = load_data(cfg.data, block_size=cfg.model.block_size)
        return self._data[key]


def checkpoint_dir(root: Path, number: int) -> Path:
    return root / f"trial_{number}"


def clean_checkpoints(study: optuna.Study, root: Path) -> None:
    """Keep the best trial's checkpoint (for hpo.validate) and those of running trials."""
    if not root.is_dir():
        return
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    try:
        best = study.best_trial.number
    except ValueError:  # no completed trial yet
        best = None
    for path in root.glob("trial_*"):
        number = int(path.name.removeprefix("trial_"))
        trial = trials.get(number)
        if number != best and trial is not None and trial.state.is_finished():
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
