"""Sampler and pruner for a study, from its spec and the command-line overrides."""

from __future__ import annotations

import numpy as np
import optuna

from hpo.study_spec import StudySpec
from trainers import TrainConfig


def make_sampler(
    spec: StudySpec, *, name: str, seed: int, worker: int, n_existing: int
) -> optuna.samplers.BaseSampler:
    """Each worker, and each resumed run, gets its own seed derived from the study seed.

    Without that, parallel workers (or a rerun) would replay the same random start-up points.
    """
    seed = int(np.random.SeedSequence([seed, worker, n_existing]).generate_state(1)[0])
    n_startup = spec.sampler.n_startup_trials
    if name == "tpe":
        # multivariate + group: models parameters jointly and handles conditional ones (the
        # betas exist only for Adam). The constant liar counts other workers' running trials as
        # bad, so that they do not pile onto one point. It is on whatever this process knows of
        # the study's workers (others may join from any machine); with one worker there are no
        # other running trials and it changes nothing (Optuna 5's default too).
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=n_startup,
            multivariate=True,
            group=True,
            constant_liar=True,
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=n_startup)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup)
    raise ValueError(f"unknown sampler {name=}")


def make_pruner(spec: StudySpec, *, name: str, cfg: TrainConfig) -> optuna.pruners.BasePruner:
    """Resources are training steps: one evaluation interval at least, max_steps at most."""
    min_resource = spec.min_resource(cfg)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min_resource,
            max_resource=cfg.train.max_steps,
            reduction_factor=spec.pruner.reduction_factor,
        )
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_resource, reduction_factor=spec.pruner.reduction_factor
        )
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.pruner.n_startup_trials, n_warmup_steps=min_resource
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name=}")
