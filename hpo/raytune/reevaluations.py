"""Seed re-evaluations (hpo.noise) on a Ray cluster.

The driver decides what is due, as the Optuna workers do (hpo.reevaluation), and writes the
companion study's trial; a Ray task trains it on any node, with a trial's resources, and hands
the result back (workers never touch the storage). One runs at a time, started after a trial
finishes; whatever is still due when Tune's experiment ends runs then. The stop rule is checked
after every trial, and once it fires the searcher asks for no more (hpo.raytune.search).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from typing import Any

import optuna
import ray
import torch

import search_spaces
from hpo import noise
from hpo import record as records
from hpo.budget import equal_compute, tokens_per_step
from hpo.objective import data_for, finished_record
from hpo.raytune.options import RayOptions
from hpo.record import TrialRecord
from hpo.reevaluation import queue_due, say, stop_below_noise
from hpo.storage import HEARTBEAT_INTERVAL_S, first_line
from hpo.study_spec import StudySpec
from trainers import TrainConfig, TrainResult, train

HOLD_S = 60.0


@ray.remote(max_retries=0)
def train_again(config: dict[str, Any], threads: int) -> TrainResult:
    """On any node: the config trained to the end, no checkpoints (a re-evaluation is short,
    and one lost with its node is queued again by the driver)."""
    torch.set_num_threads(threads)
    cfg = TrainConfig.from_dict(config)
    return train(cfg, data=data_for(cfg))


@dataclasses.dataclass(frozen=True)
class NoiseSetup:
    """What the driver needs to re-evaluate (picklable: Ray Client's Recorder carries it)."""

    spec: dict[str, Any]  # StudySpec.to_json()
    sets: dict[str, Any]
    cpu: float
    gpu: float


class Pending:
    def __init__(self, trial: optuna.Trial, ref: ray.ObjectRef, cfg: TrainConfig) -> None:
        self.trial, self.ref, self.cfg = trial, ref, cfg
        self.since = time.monotonic()


class RayReevaluations:
    def __init__(self, study: optuna.Study, setup: NoiseSetup) -> None:
        self.study, self.setup = study, setup
        self.spec = StudySpec(**setup.spec)
        self.settings = self.spec.noise
        self.minimize = self.spec.objective.minimize
        self.pending: Pending | None = None
        self.trial_finished = False

    @property
    def busy(self) -> bool:
        """Tune holds new trials back for a pending re-run (hpo.raytune.search), for HOLD_S
        at most: should the slot not come (a trial Tune staged before took it), the study goes
        on and the re-run runs when one frees, at the latest after the experiment (`finish`)."""
        return self.pending is not None and time.monotonic() - self.pending.since < HOLD_S

    def after_trial(self) -> None:
        """A search trial finished: the stop rule, then a re-evaluation if one is due."""
        if self.settings.stop_below_noise:
            stop_below_noise(self.study, self.minimize)
        self.trial_finished = True
        self.step()

    def step(self) -> None:
        """Between Tune's steps: collect a finished re-evaluation, start the next due one."""
        self._collect(block=False)
        if self.pending is None and self.trial_finished:
            self.trial_finished = False
            self._start()

    def heartbeat(self) -> None:
        if self.pending is not None:
            self.study._storage.record_heartbeat(self.pending.trial._trial_id)

    def finish(self, deadline: float | None = None) -> None:
        """After Tune's experiment: the one running, then the rest due (within the share),
        started before `deadline` (time.monotonic(); --timeout)."""
        self._wait()
        while (deadline is None or time.monotonic() < deadline) and self._start():
            self._wait()

    def _wait(self) -> None:
        """Until the running one is collected, its trial's heartbeat sent all along."""
        while self.pending is not None:
            self.heartbeat()
            ray.wait([self.pending.ref], timeout=HEARTBEAT_INTERVAL_S)
            self._collect(block=False)

    def _start(self) -> bool:
        seeds_study = noise.open_seeds_study(self.study)
        if not queue_due(self.study, seeds_study, self.settings, self.minimize):
            return False
        trial = seeds_study.ask()  # the queued one (this driver's, or one queued again)
        queued = TrialRecord.of(trial)
        if queued.reevaluates is None:  # an Optuna worker took the queued one first
            records.write(trial, TrialRecord(stop_reason=records.SURPLUS))
            seeds_study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return False
        overrides = search_spaces.suggest(trial, self.spec.search_space)
        base = self.spec.train_config(self.setup.sets)
        fallback = equal_compute(base.with_overrides(overrides), base)
        # the same config and seed as an Optuna worker's re-evaluation (hpo.objective)
        cfg = noise.reevaluation_config(seeds_study, queued, fallback=fallback)
        overrides["train.seed"] = cfg.train.seed
        record = TrialRecord.starting(
            trial.params,
            overrides,
            worker=f"{socket.gethostname()}:{os.getpid()} (a Ray task)",
            backend="ray",
            reevaluates=queued.reevaluates,
            seed_index=queued.seed_index,
            max_steps=cfg.train.max_steps,
            max_tokens=cfg.train.max_steps * tokens_per_step(cfg),
        )
        records.write(trial, record)
        resources = {"num_cpus": self.setup.cpu, "num_gpus": self.setup.gpu}
        threads = max(1, int(self.setup.cpu))
        ref = train_again.options(**resources).remote(cfg.to_dict(), threads)
        self.pending = Pending(trial, ref, cfg)
        return True

    def _collect(self, *, block: bool = False) -> None:
        if self.pending is None:
            return
        ready, _ = ray.wait([self.pending.ref], timeout=None if block else 0)
        if not ready:
            return
        pending, self.pending = self.pending, None
        trial, seeds_study = pending.trial, pending.trial.study
        record = TrialRecord.of(trial)
        try:
            result = ray.get(pending.ref)
        except Exception as e:  # diverged, out of memory, a lost node: recorded, not retried
            message = first_line(str(getattr(e, "cause", None) or e))
            records.write(
                trial, dataclasses.replace(record, stop_reason=records.ERROR, fail_reason=message)
            )
            seeds_study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            records.write(trial, finished_record(record, pending.cfg, result, tuner_s=0.0))
            values = [row[self.spec.objective.metric] for row in result.history]
            seeds_study.tell(trial, self.spec.objective.best(values))
        done = seeds_study.get_trials(deepcopy=False)[trial.number]
        say(self.study, seeds_study, done, self.spec.objective.metric)


def reevaluations(study: optuna.Study, setup: NoiseSetup | None) -> RayReevaluations | None:
    """The driver's re-evaluations, or None when the study has them off."""
    return None if setup is None else RayReevaluations(study, setup)


def noise_setup(spec: StudySpec, sets: dict[str, Any], opts: RayOptions) -> NoiseSetup | None:
    """The re-evaluations' setup for a study that has them (noise.seeds), else None."""
    if not spec.noise.seeds:
        return None
    return NoiseSetup(spec=spec.to_json(), sets=sets, cpu=opts.cpu, gpu=opts.gpu)
