"""Ray's schedulers for hpo: the study's pruner's counterpart, or population-based training.

Every scheduler counts training steps (`step` in each report), as Optuna's pruners do. PBT and
PB2 perturb settings the trainable may change while a run continues (its changeable_on_resume
hook: any, for a function that builds from its config and then restores) and that the study's
space tunes; their bounds are the space's. A trial's
config carries them at the top level, beside the sampled `overrides`: the raw value for PBT
(whose multiplicative perturbations are log-scale steps), log10 of it for PB2's GP when the
parameter is log-uniform.
"""

from __future__ import annotations

import math
from typing import Any

from optuna.distributions import FloatDistribution
from ray import tune
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TrialScheduler,
)
from ray.tune.schedulers.pb2 import PB2

from hpo.errors import UsageError
from hpo.study_spec import StudySpec, dry_run
from hpo.trainable import steps_of

TIME_ATTR = "step"  # Ray's schedulers count training steps, like Optuna's pruners
PBT_SCHEDULERS = ("pbt", "pb2")
PRUNER_TO_SCHEDULER = {"hyperband": "asha", "sha": "asha", "median": "median", "none": "fifo"}
CONFIG_KEYS = ("hpo_number", "overrides")  # a trial's config besides the perturbed settings


def pbt_mutations(spec: StudySpec, sets: dict[str, Any], scheduler: str) -> tuple[str, ...]:
    """The settings PBT/PB2 perturbs: in the space, and changeable in a running trial."""
    dists = dry_run(spec).distributions
    wanted = spec.ray.pbt.mutations
    changeable = spec.trainable().changeable_on_resume()
    bad = [m for m in wanted if changeable is not None and m not in changeable]
    if bad:
        raise UsageError(
            f"ray.pbt.mutations: {bad[0]!r} cannot change while a run continues; "
            f"valid: {', '.join(sorted(changeable or ()))}"
        )
    mutations = tuple(m for m in wanted if isinstance(dists.get(m), FloatDistribution))
    if not mutations:
        raise UsageError(
            f"--scheduler {scheduler} perturbs {', '.join(wanted)}, but the study's search space "
            f"tunes none of them (it tunes {', '.join(sorted(dists))})"
        )
    interval = spec.ray.pbt.perturbation_interval
    eval_interval = steps_of(spec.fixed_config(sets))[1]
    if interval is not None and eval_interval is not None and interval < eval_interval:
        raise UsageError(
            f"ray.pbt.perturbation_interval ({interval} steps) is shorter than "
            f"train.eval_interval ({eval_interval}): members report only at evaluations"
        )
    return mutations


def make_scheduler(
    name: str,
    spec: StudySpec,
    config: dict[str, Any],
    *,
    mutations: tuple[str, ...],
    pruner: str,
) -> TrialScheduler:
    """Ray's counterpart of the study's pruner, in training steps; or PBT/PB2. (The steps were
    checked to be there: hpo.raytune.options.)"""
    min_resource = spec.min_resource(config)
    (max_steps, eval_interval), rf = steps_of(config), spec.pruner.reduction_factor
    if name == "asha":
        # Optuna's Hyperband pruner runs asynchronous successive halving in several brackets
        brackets = 1 if pruner == "sha" else int(math.log(max_steps / min_resource, rf)) + 1
        return ASHAScheduler(
            time_attr=TIME_ATTR,
            max_t=max_steps,
            grace_period=min_resource,
            reduction_factor=rf,
            brackets=max(1, brackets),
        )
    if name == "hyperband":  # synchronous: pauses trials at rungs, resumes them from checkpoints
        return HyperBandScheduler(time_attr=TIME_ATTR, max_t=max_steps, reduction_factor=rf)
    if name == "median":
        return MedianStoppingRule(
            time_attr=TIME_ATTR,
            grace_period=min_resource,
            min_samples_required=max(1, spec.pruner.n_startup_trials),
        )
    if name == "fifo":
        return FIFOScheduler()
    p = spec.ray.pbt
    interval = p.perturbation_interval or 2 * eval_interval
    bounds = mutation_bounds(spec, mutations)
    if name == "pbt":
        domains = {
            key: tune.loguniform(lo, hi) if log else tune.uniform(lo, hi)
            for key, (lo, hi, log) in bounds.items()
        }
        return PopulationBasedTraining(
            time_attr=TIME_ATTR,
            perturbation_interval=interval,
            hyperparam_mutations=domains,
            quantile_fraction=p.quantile_fraction,
            resample_probability=p.resample_probability,
            perturbation_factors=tuple(p.perturbation_factors),
            custom_explore_fn=Clip({k: (lo, hi) for k, (lo, hi, _) in bounds.items()}),
            synch=p.synch,
        )
    if name == "pb2":  # a GP over the hyperparameters: log-scale ones are modelled as log10
        pb2_bounds = {
            pb2_key(key, log): (math.log10(lo), math.log10(hi)) if log else (lo, hi)
            for key, (lo, hi, log) in bounds.items()
        }
        return PB2(
            time_attr=TIME_ATTR,
            perturbation_interval=interval,
            hyperparam_bounds={key: list(b) for key, b in pb2_bounds.items()},
            quantile_fraction=p.quantile_fraction,
            # PB2 proposes float32 values, which at a bound can land a hair outside it (dropout
            # 0.3 as 0.30000001): clipped back, so that what trains is within the space
            custom_explore_fn=Clip(pb2_bounds),
            synch=p.synch,
        )
    raise ValueError(f"unknown scheduler {name=}")


def mutation_bounds(spec: StudySpec, mutations) -> dict[str, tuple[float, float, bool]]:
    dists = dry_run(spec).distributions
    return {m: (dists[m].low, dists[m].high, dists[m].log) for m in mutations}


def pb2_key(key: str, log: bool) -> str:
    return f"log10({key})" if log else key


class Clip:
    """PBT's perturbations multiply; keep the results inside the search space's bounds."""

    def __init__(self, bounds: dict[str, tuple[float, float]]) -> None:
        self.bounds = bounds

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for key, (lo, hi) in self.bounds.items():
            if key in config:
                config[key] = min(max(float(config[key]), lo), hi)
        return config


class Member:
    """tune.sample_from: a PBT member's starting value of `key` (picklable, for restores)."""

    def __init__(self, members: dict[int, dict[str, Any]], key: str) -> None:
        self.members, self.key = members, key

    def __call__(self, config: dict[str, Any]) -> Any:
        return self.members[config["hpo_number"]][self.key]


def current_values(config: dict[str, Any], mutations: tuple[str, ...]) -> dict[str, float]:
    """The current values of the perturbed settings, as the trainer gets them."""
    out = {}
    for key in mutations:
        if key in config:
            out[key] = float(config[key])
        elif f"log10({key})" in config:
            out[key] = 10.0 ** float(config[f"log10({key})"])
    return out


def starting_values(
    config: dict[str, Any], bounds: dict[str, tuple[float, float, bool]], *, pb2: bool
) -> dict[str, float]:
    """A member's perturbed settings as its config carries them, from its starting config."""
    flat, out = config, {}
    for key, (lo, hi, log) in bounds.items():
        value = min(max(float(flat[key]), lo), hi)  # weight decay switched off: its floor
        if pb2:
            out[pb2_key(key, log)] = math.log10(value) if log else value
        else:
            out[key] = value
    return out


def perturbed(config: dict[str, Any]) -> dict[str, float]:
    """The perturbed settings in a trial's config, as config overrides."""
    out = {}
    for key, value in config.items():
        if key.startswith("log10(") and key.endswith(")"):
            out[key[6:-1]] = 10.0**value
        elif key not in CONFIG_KEYS:
            out[key] = value
    return out
