"""Where a Ray trial's config comes from: the study's sampler and define-by-run space.

Ray's Optuna searcher asks the study for each trial; PBT's population is asked up front. A trial's
config is {"hpo_number", "overrides"} (plus PBT's perturbed settings); trial_config turns it back
into the config the trainable gets.
"""

from __future__ import annotations

from typing import Any

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from hpo import space
from hpo.noise import STOPPED
from hpo.raytune.options import RayOptions
from hpo.raytune.recorder import Driver
from hpo.raytune.schedulers import mutation_bounds, perturbed, starting_values
from hpo.record import TrialRecord, write
from hpo.study_spec import StudySpec


class SpaceFn:
    """The study's define-by-run space, for Ray's OptunaSearch (picklable: Tune saves it)."""

    def __init__(self, spaces: dict[str, dict[str, Any] | None]) -> None:
        self.spaces = spaces

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        return {"overrides": space.suggest(trial, self.spaces)}


class StudySearch(OptunaSearch):
    """Ray's Optuna searcher on the study's own storage, sampler and space.

    It asks; the Recorder reports and tells (with the trainer's step, the right state and the
    user attrs), since the searcher would see neither the step nor why a trial ended.
    """

    def __init__(self, space: SpaceFn, *, experiment: str, **kwargs: Any) -> None:
        super().__init__(space=space, **kwargs)
        self.experiment = experiment

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if Driver.reevaluating() and self._live_trials():
            # the slot of the trial that just ended goes to the seed re-run first. Only while a
            # trial is live: Tune frees an ended trial's slot as it handles events, and with no
            # trial live it stops handling them and only asks this searcher, so holding then
            # would keep the re-run's slot taken for good
            return None
        if self._ot_study.user_attrs.get(STOPPED):  # hpo.noise's stop rule fired
            return Searcher.FINISHED
        if Driver.current is not None and Driver.current.contract is not None:
            return Searcher.FINISHED  # the trainable breaks the seam's contract: stop asking
        config = super().suggest(trial_id)
        trial = self._ot_trials[trial_id]
        _start_attrs(trial, config["overrides"], self.experiment)
        return {"hpo_number": trial.number, "overrides": config["overrides"]}

    def _live_trials(self) -> bool:
        """Trials asked for and not yet complete (pending or running in Tune)."""
        return bool(self._ot_trials.keys() - self._completed_trials)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # the Recorder stores it

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self._completed_trials.add(trial_id)  # the Recorder tells the study


def ask_members(
    study: optuna.Study,
    spec: StudySpec,
    n: int,
    sampler: optuna.samplers.BaseSampler,
    opts: RayOptions,
    experiment: str,
) -> dict[int, dict[str, Any]]:
    """PBT's starting population, sampled by the study's sampler: one Optuna trial per member."""
    study.sampler = sampler
    bounds = mutation_bounds(spec, opts.mutations)
    members = {}
    for _ in range(n):
        trial = study.ask()
        overrides = space.suggest(trial, spec.search_space)
        _start_attrs(trial, overrides, experiment)
        start = spec.config_with(overrides)
        members[trial.number] = {
            "overrides": overrides,
            **starting_values(start, bounds, pb2=opts.scheduler == "pb2"),
        }
    return members


def _start_attrs(trial: optuna.Trial, overrides: dict[str, Any], experiment: str) -> None:
    write(trial, TrialRecord.starting(trial.params, overrides, backend="ray"))
    trial.set_user_attr("ray.experiment", experiment)


def trial_config(config: dict[str, Any], spec: StudySpec, sets: dict[str, Any]) -> dict[str, Any]:
    """Study settings <- --set <- the trial's overrides <- PBT's current values: what the trial
    records is what trains."""
    return spec.config_with({**config["overrides"], **perturbed(config)}, sets=sets)
