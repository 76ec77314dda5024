"""One Ray experiment for the study: the Tuner's searcher, scheduler, resources and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.experiment import Trial

from hpo.plan import WorkerPlan
from hpo.raytune.cluster import cluster_slots
from hpo.raytune.options import RayOptions
from hpo.raytune.recorder import Recorder, RecordTo
from hpo.raytune.reevaluations import noise_setup
from hpo.raytune.schedulers import PBT_SCHEDULERS, Member, make_scheduler
from hpo.raytune.search import SpaceFn, StudySearch, ask_members
from hpo.storage import public_url, storage_of
from hpo.strategy import make_sampler
from hpo.study_spec import StudySpec


def new_tuner(
    spec: StudySpec,
    opts: RayOptions,
    study: optuna.Study,
    plan: WorkerPlan,
    trainable: Any,
    experiment: str,
    n: int,
) -> tune.Tuner:
    """A fresh experiment of `n` trials: the study's sampler asks them, or (PBT/PB2) a population
    of `n` members asked up front; the Recorder writes them into the study."""
    metric, mode = spec.objective.metric, "min" if spec.objective.minimize else "max"
    scheduler = make_scheduler(
        opts.scheduler,
        spec,
        spec.fixed_config(plan.sets),
        mutations=opts.mutations,
        pruner=plan.pruner,
    )
    param_space, search_alg, num_samples = _search(spec, opts, study, plan, experiment, n)
    resources = {"cpu": opts.cpu, "gpu": opts.gpu} if opts.gpu else {"cpu": opts.cpu}
    record_to = RecordTo(
        url=public_url(plan.url),  # Tune pickles it into the experiment folder: no password
        study_name=study.study_name,
        metric=metric,
        direction=spec.objective.direction,
        experiment=experiment,
        checkpoint_root=str(Path(plan.checkpoint_root).resolve()),
        keep_all=opts.keep_checkpoints,
        mutations=opts.mutations,
        noise=noise_setup(spec, plan.sets, opts),
    )
    pbt = opts.scheduler in PBT_SCHEDULERS
    return tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            # as many as the cluster holds; told to Tune, it also starts them all at once
            # (with a searcher and no limit, Tune starts one trial at a time)
            max_concurrent_trials=opts.max_concurrent or max(1, int(cluster_slots(opts))),
            time_budget_s=opts.timeout,
            # a worker process serves trial after trial (and keeps its tokenized data): a
            # stopped trial's report raises SystemExit, which ends its function at once. Not
            # with seed re-runs: a cached actor keeps its trial's CPUs and GPU, and the re-run
            # (a Ray task, hpo.raytune.reevaluations) would wait for them forever
            reuse_actors=not spec.noise.seeds,
            trial_dirname_creator=_dirname,
        ),
        run_config=tune.RunConfig(
            name=experiment,
            storage_path=opts.storage_path,
            verbose=0,
            callbacks=[Recorder(record_to)],
            failure_config=tune.FailureConfig(max_failures=spec.ray.max_failures),
            # PBT saves the checkpoint a member already reported; with num_to_keep Ray then
            # deletes it twice and fails the trial. The experiment folder goes when it ends.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if pbt else 2),
        ),
    )


def _search(
    spec: StudySpec,
    opts: RayOptions,
    study: optuna.Study,
    plan: WorkerPlan,
    experiment: str,
    n: int,
) -> tuple[dict[str, Any], StudySearch | None, int]:
    """(param_space, search_alg, num_samples): the study's sampler asks each of `n` trials, or
    (PBT/PB2) asks a population of `n` members up front."""
    sampler = make_sampler(
        spec, name=plan.sampler, seed=plan.seed, worker=0, n_existing=len(study.trials)
    )
    if opts.scheduler in PBT_SCHEDULERS:
        members = ask_members(study, spec, n, sampler, opts, experiment)
        param_space: dict[str, Any] = {
            "hpo_number": tune.grid_search(sorted(members)),  # one trial per member
            **{key: tune.sample_from(Member(members, key)) for key in members[min(members)]},
        }
        return param_space, None, 1
    search_alg = StudySearch(
        SpaceFn(spec.search_space),
        metric=spec.objective.metric,
        mode="min" if spec.objective.minimize else "max",
        sampler=sampler,
        storage=storage_of(study),
        study_name=study.study_name,
        experiment=experiment,
    )
    return {}, search_alg, n


def _dirname(trial: Trial) -> str:
    return f"trial_{trial.config.get('hpo_number', trial.trial_id)}_{trial.trial_id}"
