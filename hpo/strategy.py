"""Sampler and pruner for a study, from its spec and the command-line overrides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.study_spec import StudySpec
from hpo.trainable import steps_of


def make_sampler(
    spec: StudySpec, *, name: str, seed: int, worker: int, n_existing: int
) -> optuna.samplers.BaseSampler:
    """TPE and random search draw each trial's randomness from the study seed and the trial's
    number (`TrialSeeded`), so a resumed study proposes what an uninterrupted one would have.

    The other samplers keep one stream per worker and run, seeded from the study seed, the
    worker and the trials already there: without that, parallel workers (or a rerun) would
    replay the same random start-up points.
    """
    n_startup = spec.sampler.n_startup_trials
    if name == "tpe":
        # multivariate + group: models parameters jointly and handles conditional ones (the
        # betas exist only for Adam). The constant liar counts other workers' running trials as
        # bad, so that they do not pile onto one point. It is on whatever this process knows of
        # the study's workers (others may join from any machine); with one worker there are no
        # other running trials and it changes nothing (Optuna 5's default too).
        return TrialSeeded(
            optuna.samplers.TPESampler,
            seed=seed,
            n_startup_trials=n_startup,
            multivariate=True,
            group=True,
            constant_liar=True,
        )
    if name == "random":
        return TrialSeeded(optuna.samplers.RandomSampler, seed=seed)
    seed = int(np.random.SeedSequence([seed, worker, n_existing]).generate_state(1)[0])
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=n_startup)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup)
    raise ValueError(f"unknown sampler {name=}")


def make_pruner(spec: StudySpec, *, name: str, config: dict[str, Any]) -> optuna.pruners.BasePruner:
    """Resources are training steps: one evaluation interval at least, max_steps at most
    (Optuna's "auto" where the fixed config does not say them)."""
    min_resource = spec.min_resource(config) or "auto"
    max_steps = steps_of(config)[0] or "auto"
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min_resource,
            max_resource=max_steps,
            reduction_factor=spec.pruner.reduction_factor,
        )
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_resource, reduction_factor=spec.pruner.reduction_factor
        )
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.pruner.n_startup_trials,
            n_warmup_steps=0 if min_resource == "auto" else min_resource,
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name=}")


KEPT_SAMPLERS = 64  # trials of one process sampled at once, at most (threads, Ray's searcher)


class TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler made afresh for each trial, seeded from the study seed and the trial's number.

    What a trial is proposed then depends only on the study's seed and its finished trials, not
    on which process asks or how often the study was resumed: a resumed study proposes exactly
    what an uninterrupted one would, and two workers never replay each other's random points
    (their trials have different numbers). The sampler kept no state between trials that this
    loses: TPE refits its model on the study's trials at every trial anyway.
    """

    def __init__(
        self, sampler_class: type[optuna.samplers.BaseSampler], *, seed: int, **settings: Any
    ) -> None:
        # a class and its settings, not a closure: Ray pickles the sampler with its searcher
        self._sampler_class = sampler_class
        self._settings = settings
        self._seed = seed
        # by trial number: with n_jobs > 1, threads of one process sample several trials at once
        self._samplers: dict[int, optuna.samplers.BaseSampler] = {}

    def _sampler(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        sampler = self._samplers.get(trial.number)
        if sampler is None:
            trial_seed = np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0]
            sampler = self._sampler_class(seed=int(trial_seed), **self._settings)
            self._samplers[trial.number] = sampler
            # a trial that never ends here (its worker died) must not keep its sampler forever
            for number in sorted(self._samplers)[:-KEPT_SAMPLERS]:
                self._samplers.pop(number, None)
        return sampler

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._sampler(trial).before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._sampler(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._sampler(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._sampler(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._sampler(trial).after_trial(study, trial, state, values)
        self._samplers.pop(trial.number, None)

    def reseed_rng(self) -> None:
        """Optuna reseeds a sampler shared by threads so that they differ; trials here already
        differ by their numbers, and a reseed would make suggestions unreproducible."""
