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
import tempfile
import time
from typing import Any

import optuna
import ray
import torch

from hpo import noise, space
from hpo import record as records
from hpo.objective import finished_record
from hpo.raytune.options import RayOptions
from hpo.record import TrialRecord
from hpo.reevaluation import queue_due, say, stop_below_noise
from hpo.seam import Outcome, Run, execute
from hpo.storage import HEARTBEAT_INTERVAL_S, first_line, trial_id
from hpo.study_spec import StudySpec
from hpo.trainable import SEED_KEY, steps_of

HOLD_S = 60.0


@ray.remote(max_retries=0)
def train_again(config: dict[str, Any], spec: dict[str, Any], threads: int) -> Outcome:
    """On any node: the config trained to the end, its checkpoints thrown away (a
    re-evaluation is short, and one lost with its node is queued again by the driver)."""
    torch.set_num_threads(threads)
    study_spec = StudySpec(**spec)
    objective = study_spec.objective
    with tempfile.TemporaryDirectory(prefix="hpo-seed-") as folder:
        run = Run(
            config, metric=objective.metric, minimize=objective.minimize, checkpoint_dir=folder
        )
        return execute(study_spec.trainable(), run)


@dataclasses.dataclass(frozen=True)
class NoiseSetup:
    """What the driver needs to re-evaluate (picklable: Ray Client's Recorder carries it)."""

    spec: dict[str, Any]  # StudySpec.to_json()
    sets: dict[str, Any]
    cpu: float
    gpu: float


class Pending:
    def __init__(self, trial: optuna.Trial, ref: ray.ObjectRef, config: dict[str, Any]) -> None:
        self.trial, self.ref, self.config = trial, ref, config
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
            self.pending.trial.storage.record_heartbeat(trial_id(self.pending.trial))

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
        overrides = space.suggest(trial, self.spec.search_space)
        trainable = self.spec.trainable()
        fixed = self.spec.fixed_config(self.setup.sets)
        fallback = trainable.budget(self.spec.config_with(overrides, sets=self.setup.sets), fixed)
        # the same config and seed as an Optuna worker's re-evaluation (hpo.objective)
        config = noise.reevaluation_config(seeds_study, queued, fallback=fallback)
        overrides[SEED_KEY] = config.get(SEED_KEY, 0)
        max_steps, tokens = steps_of(config)[0], trainable.tokens_per_step(config)
        record = TrialRecord.starting(
            trial.params,
            overrides,
            worker=f"{socket.gethostname()}:{os.getpid()} (a Ray task)",
            backend="ray",
            reevaluates=queued.reevaluates,
            seed_index=queued.seed_index,
            max_steps=max_steps,
            max_tokens=max_steps * tokens if max_steps is not None and tokens else None,
        )
        records.write(trial, record)
        resources = {"num_cpus": self.setup.cpu, "num_gpus": self.setup.gpu}
        threads = max(1, int(self.setup.cpu))
        ref = train_again.options(**resources).remote(config, self.setup.spec, threads)
        self.pending = Pending(trial, ref, config)
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
            outcome = ray.get(pending.ref)
        except Exception as e:  # diverged, out of memory, a lost node: recorded, not retried
            message = first_line(str(getattr(e, "cause", None) or e))
            records.write(
                trial, dataclasses.replace(record, stop_reason=records.ERROR, fail_reason=message)
            )
            seeds_study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            trainable, entry = self.spec.trainable(), self.spec.entry
            done = finished_record(
                record, pending.config, outcome, trainable=trainable, entry=entry
            )
            records.write(trial, done)
            seeds_study.tell(trial, outcome.best_value)
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
