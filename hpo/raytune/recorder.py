"""The driver's side of a Ray run: Ray's trial events written into the Optuna storage.

Only the driver writes to the storage, so a Ray-run trial looks like any other to hpo.dashboard,
hpo.analyze and hpo.validate. Driver does the writing; Recorder is the Tune callback that feeds it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.experiment import Trial

from hpo.raytune.reevaluations import NoiseSetup, RayReevaluations, reevaluations
from hpo.raytune.schedulers import current_values
from hpo.record import CONTRACT, DIVERGED, ERROR
from hpo.storage import (
    HEARTBEAT_INTERVAL_S,
    open_storage,
    storage_of,
    trial_id,
    trial_id_by_number,
    update_record,
)


class Driver:
    """Turns Ray's trial events into Optuna trial records (the driver's side of a run)."""

    current: Driver | None = None  # hpo.run's, in its own process

    def __init__(
        self,
        study: optuna.Study,
        *,
        metric: str,
        direction: str,
        experiment: str,
        checkpoint_root: Path,
        keep_all: bool,
        progress: Any,
        mutations: tuple[str, ...],
        reevaluations: RayReevaluations | None = None,
    ) -> None:
        self.study, self.storage = study, storage_of(study)
        self.reevaluations = reevaluations  # hpo.noise's seed re-runs, when the study has them
        self.metric, self.minimize = metric, direction == "minimize"
        self.experiment = experiment
        self.checkpoint_root, self.keep_all = checkpoint_root, keep_all
        self.progress, self.mutations = progress, mutations
        self.numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self.ids: dict[int, int] = {}  # Optuna trial number -> storage trial id
        self.steps: dict[int, dict[int, float]] = {}  # values stored per trial and step
        self.segments: dict[int, set[str]] = {}
        self.started: set[int] = set()
        self.beat_at = 0.0
        self.first_start: float | None = None
        self.contract: str | None = None  # how the trainable broke the seam's contract, if so

    def number(self, trial: Trial) -> int:
        """An exploited PBT member carries its donor's config, hpo_number included: what the
        trial was first started as (stored as ray.trial_id, for restores) tells who it is."""
        known = self._number_of(trial.trial_id)
        if known is None:
            known = self.numbers[trial.trial_id] = int(trial.config["hpo_number"])
        return known

    def _number_of(self, ray_trial_id: str) -> int | None:
        if ray_trial_id not in self.numbers:
            for t in self.study.get_trials(deepcopy=False):
                if t.user_attrs.get("ray.trial_id") == ray_trial_id:
                    self.numbers[ray_trial_id] = t.number
        return self.numbers.get(ray_trial_id)

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(self._id(number))

    def _id(self, number: int) -> int:
        if number not in self.ids:
            self.ids[number] = trial_id_by_number(self.study, number)
        return self.ids[number]

    def _running(self, number: int) -> optuna.trial.FrozenTrial | None:
        t = self.storage.get_trial(self._id(number))
        return t if t.state == TrialState.RUNNING else None

    def _set(self, number: int, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(self._id(number), key, value)

    def start(self, trial: Trial) -> None:
        if self.first_start is None:
            self.first_start = time.time()
        n = self.number(trial)
        if n not in self.started and self._running(n) is not None:
            self.started.add(n)
            self._set(n, "ray.trial_id", trial.trial_id)
            self._set(n, "ray.experiment", self.experiment)
            self.storage.record_heartbeat(self._id(n))

    def result(self, trial: Trial, result: dict[str, Any]) -> None:
        n = self.number(trial)
        t = self._running(n)
        if t is None or "hpo/failed" in result or "step" not in result:
            return
        step = int(result["step"])
        seen = self.steps.setdefault(n, dict(t.intermediate_values))
        if step not in seen and not result.get("hpo/done"):
            value = float(result[self.metric])
            self.storage.set_trial_intermediate_value(self._id(n), step, value)
            seen[step] = value
        node = result.get("hpo/node_id")
        nodes = t.user_attrs.get("ray.nodes", [])
        if node and node not in nodes:
            self._set(n, "ray.nodes", [*nodes, node])
            self._set(n, "ray.node_id", nodes[0] if nodes else node)
        segment = result.get("hpo/segment")
        if segment and segment not in self.segments.setdefault(n, set()):
            self.segments[n].add(segment)
            self._new_segment(n, t, trial, result)

    def _new_segment(self, n: int, t, trial: Trial, result: dict[str, Any]) -> None:
        """The trial function (re)started: a fresh start, a retry or a PBT exploit."""
        source, at = result.get("hpo/restored_from"), int(result.get("hpo/restored_step", 0))
        self._set(n, "ray.pid", result.get("hpo/pid"))
        if source and source != trial.trial_id:  # PBT copied a better member's state
            donor = self._number_of(source)
            own = t.intermediate_values
            donor_values = {} if donor is None else self._frozen(donor).intermediate_values
            event = {
                "step": at,  # of the donor's checkpoint, where this member goes on from
                "donor": donor,
                "donor_value": donor_values.get(at),  # the donor's evaluation there
                "own_value": own[max(own)] if own else None,  # this member's last, before
                "value_after": None,  # its first evaluation after (none if nothing was left)
                "step_after": None,
            }
            if int(result["step"]) > at:
                event.update(value_after=float(result[self.metric]), step_after=int(result["step"]))
            self._set(n, "pbt.lineage", [*t.user_attrs.get("pbt.lineage", []), event])
        elif source:  # its own checkpoint: a retry after a crash, or a restored experiment
            self._set(n, "ray.resumed_at", [*t.user_attrs.get("ray.resumed_at", []), at])
        if self.mutations:
            values = current_values(trial.config, self.mutations)
            schedule = t.user_attrs.get("pbt.schedule", [])
            if not schedule or {k: schedule[-1][k] for k in values} != values:
                self._set(n, "pbt.schedule", [*schedule, {"step": at, **values}])

    def finish(self, trial: Trial, error: str | None = None) -> None:
        n = self.number(trial)
        t = self._running(n)
        if t is None:
            return
        r = trial.last_result or {}
        if error is None and r.get("hpo/failed") == DIVERGED:
            return self._diverged(n, r)
        if error is not None or "hpo/failed" in r:
            reason = error or r.get("hpo/fail_reason", "failed")
            steps = int(r["step"]) if "step" in r else None
            stop_reason = r.get("hpo/failed", ERROR)
            if stop_reason == CONTRACT:  # every trial would: the searcher asks no more
                self.contract = reason
            update_record(self.study, n, stop_reason=stop_reason, fail_reason=reason, steps=steps)
            self.study.tell(n, state=TrialState.FAIL, skip_if_finished=True)
            return self._update_progress()
        step = int(r.get("step", 0))
        max_steps = r.get("hpo/max_steps")
        done = bool(r.get("hpo/done")) or (max_steps is not None and step >= int(max_steps))
        values = self.steps.get(n) or dict(self.storage.get_trial(self._id(n)).intermediate_values)
        pick = min if self.minimize else max
        best_step = pick(values, key=values.__getitem__) if values else 0
        stop_reason = r.get("hpo/stop_reason", "max_steps") if done else "pruned"
        update_record(self.study, n, **_outcome(r, stop_reason=stop_reason, best_step=best_step))
        if not values:
            update_record(self.study, n, fail_reason="the trial ended before its first evaluation")
            self.study.tell(n, state=TrialState.FAIL, skip_if_finished=True)
        elif done:
            self.study.tell(n, values[best_step], skip_if_finished=True)
            self._keep_checkpoint(trial, n)
        else:
            self.study.tell(n, state=TrialState.PRUNED, skip_if_finished=True)
        self._update_progress()

    def _diverged(self, n: int, r: dict[str, Any]) -> None:
        """Pruned at the step it blew up, with a value worse than any healthy run's, so that
        the sampler learns to avoid the region (as hpo.objective does)."""
        step = int(r["step"])
        reason = r.get("hpo/fail_reason", "")
        update_record(self.study, n, stop_reason=DIVERGED, fail_reason=reason, steps=step)
        if step not in self.steps.setdefault(n, {}):
            self.storage.set_trial_intermediate_value(self._id(n), step, float(r[self.metric]))
        self.study.tell(n, state=TrialState.PRUNED, skip_if_finished=True)
        self._update_progress()

    def _keep_checkpoint(self, trial: Trial, n: int) -> None:
        """The best trial's best.pt where the Optuna backend keeps it (hpo.validate, users)."""
        try:
            best = self.study.best_trial.number
        except ValueError:
            return
        checkpoint = trial.checkpoint
        if checkpoint is None or (n != best and not self.keep_all):
            return
        dest = self.checkpoint_root / f"trial_{n}"
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint.to_directory(tmp)
            dest.mkdir(parents=True, exist_ok=True)
            for name in ("best.pt", "last.pt"):
                if (Path(tmp) / name).exists():
                    shutil.copy2(Path(tmp) / name, dest / name)

    @classmethod
    def reevaluating(cls) -> bool:
        """A seed re-run of this process's driver waits for a slot or runs (hpo.noise). Asked
        by the searcher before each new trial; it collects the re-run once done."""
        driver = cls.current
        if driver is None or driver.reevaluations is None:
            return False
        driver.reevaluations.step()  # collects it once it is done
        return driver.reevaluations.busy

    def after_trial(self) -> None:
        if self.reevaluations is not None:
            self.reevaluations.after_trial()

    def heartbeat(self) -> None:
        """This experiment's trials send heartbeats, so `fail_stale_trials` tells a dead
        driver's trials. Those still waiting for Tune to start them too: each beat once when
        it was asked for (hpo.storage), and would otherwise look dead to other workers after
        the grace period (a PBT population larger than the cluster, a trial waiting for a
        node)."""
        if self.reevaluations is not None:
            self.reevaluations.step()
        if time.time() - self.beat_at < HEARTBEAT_INTERVAL_S:
            return
        self.beat_at = time.time()
        if self.reevaluations is not None:
            self.reevaluations.heartbeat()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("ray.experiment") == self.experiment:
                self.storage.record_heartbeat(trial_id(t))

    def _update_progress(self) -> None:
        if self.progress is not None:
            self.progress.update(self.study, self.study.get_trials(deepcopy=False))


def _outcome(r: dict[str, Any], *, stop_reason: str, best_step: int) -> dict[str, Any]:
    """The record's fields from a trial's last Tune result (hpo.raytune.trainable.Reporter)."""
    manifest = json.loads(r["hpo/manifest"]) if "hpo/manifest" in r else None
    steps = int(r.get("step", 0))
    if manifest is not None:  # made while the trial ran: it says how it ended
        manifest.update(stop_reason=stop_reason)
    return {
        "backend": "ray",
        "stop_reason": stop_reason,
        "steps": steps,
        "max_steps": r.get("hpo/max_steps"),
        "tokens": r.get("hpo/tokens"),
        "max_tokens": r.get("hpo/max_tokens"),
        "best_step": best_step,
        "tokens_per_s": r.get("hpo/tokens_per_s"),
        "n_params": r.get("hpo/n_params"),
        "wall_time_s": r.get("hpo/wall_time_s", 0.0),
        "metrics": json.loads(r.get("hpo/metrics", "{}")),
        "manifest": manifest,
    }


@dataclass(frozen=True)
class RecordTo:
    """Where a Recorder that runs outside hpo.run's process records (Ray Client runs Tune's
    loop on the head node): enough to open the study there."""

    url: str
    study_name: str
    metric: str
    direction: str
    experiment: str
    checkpoint_root: str
    keep_all: bool
    mutations: tuple[str, ...]
    noise: NoiseSetup | None = None  # the study's seed re-runs, when it has them


class Recorder(tune.Callback):
    """Tune's callbacks on the driver, forwarded to a Driver: hpo.run's own (Driver.current,
    which also restored experiments use, since Tuner.restore unpickles its callbacks), else one
    opened from `to` where Tune's loop runs."""

    def __init__(self, to: RecordTo) -> None:
        self.to = to
        self._own: Driver | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"to": self.to, "_own": None}

    def driver(self) -> Driver:
        if Driver.current is not None:
            return Driver.current
        if self._own is None:
            study = optuna.load_study(
                study_name=self.to.study_name, storage=open_storage(self.to.url)
            )
            self._own = Driver(
                study,
                metric=self.to.metric,
                direction=self.to.direction,
                experiment=self.to.experiment,
                checkpoint_root=Path(self.to.checkpoint_root),
                keep_all=self.to.keep_all,
                progress=None,
                mutations=self.to.mutations,
                reevaluations=reevaluations(study, self.to.noise),
            )
            # the driver of this process (Tune's loop under Ray Client): the searcher asks it
            Driver.current = self._own
        return self._own

    def on_trial_start(self, iteration, trials, trial, **info):
        self.driver().start(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.driver().result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.driver().finish(trial)
        self.driver().after_trial()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.driver().finish(trial, error=_error_message(trial))
        self.driver().after_trial()

    def on_step_end(self, iteration, trials, **info):
        # (Tune's callbacks have no on_step: a method of that name was never called, and Ray
        # trials sent no heartbeats after their first)
        self.driver().heartbeat()


def _error_message(trial: Trial) -> str:
    """The last line of the trial's traceback (Ray keeps the whole in error.txt)."""
    path = getattr(trial, "error_file", None)
    try:
        lines = [x for x in Path(path).read_text().splitlines() if x.strip()] if path else []
    except OSError:
        lines = []
    tail = lines[-1].strip() if lines else "the Ray trial failed"
    return f"{tail} (after {trial.run_metadata.num_failures} attempt(s); see {path})"
