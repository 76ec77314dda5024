"""Prove the winner: the core of python -m hpo.validate (its door, hpo.cli.validate, says what
the command does). Jobs of (config, seed) trained side by side, each seed's result stored in the
study the moment it is done, the sequential looks, and the report."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FixedTrial, TrialState
from tqdm.auto import tqdm

from hpo import noise, space
from hpo.errors import StudyFailedError, UsageError
from hpo.manifest import manifest_config
from hpo.objective import error_line
from hpo.record import TrialRecord
from hpo.seam import ContractError, Run, Sink, execute
from hpo.storage import load_existing_study, runs_dir, stored_name
from hpo.study_spec import StudySpec
from hpo.tracking import Tracker, Tracking, make_tracker, resolve_tracking, tracker_for
from hpo.trainable import importable, load_trainable, nest
from hpo.validation.report import ATTR, differences, report, test_metric, write_report
from hpo.validation.sequential import look, looks, settle_plan
from hpo.validation.stats import ADVISED_PAIRS, MIN_PAIRS, smallest_p

SEED_BASE = 1000  # validation seeds are 1000, 1001, ...: never the tuning seed
MAX_TIED = 5  # the most trials validated by default: the best and those tied with it


@dataclass(frozen=True)
class Job:
    label: str  # "baseline" or "trial_12"
    config: dict[str, Any]
    seed: int
    key: str  # study user attr that holds the result
    workdir: str
    entry: str  # the trainable (hpo.trainable)
    metric: str  # the study's objective, and its direction
    minimize: bool
    tracking: Tracking = field(default_factory=Tracking)  # W&B / MLflow run per (config, seed)
    legacy_key: str = ""  # where hpo stored it before the seam (by the grouped config's digest)


def configs_to_validate(
    study: optuna.Study, *, trial: int | None, top_k: int | None
) -> dict[str, dict[str, Any]]:
    """{label: config} for the chosen trials and the baseline. Raises UsageError when there is
    nothing to compare.

    Trials rank by their mean over seeds (hpo.noise; a trial with one seed by its value).
    Without --trial or --top-k: the best trial and those tied with it within the seed noise
    the study measured (up to MAX_TIED), or the best alone where it measured none."""
    if "hpo.spec" not in study.user_attrs:
        raise UsageError(
            f"study {study.study_name!r} was not made by hpo.run (no study spec stored)"
        )
    spec = StudySpec(**study.user_attrs["hpo.spec"])
    sets = study.user_attrs.get("hpo.sets", {})
    if spec.baseline is None:
        raise UsageError(
            f"study {study.study_name!r} has no baseline to compare against: "
            "add a `baseline:` section to its YAML (e.g. `baseline: {}` for the trainer defaults)"
        )
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        raise UsageError(
            f"study {study.study_name!r} has no completed trial to validate; run hpo.run first"
        )
    if trial is not None:
        chosen = [t for t in complete if t.number == trial]
        if not chosen:
            raise UsageError(f"trial {trial} of {study.study_name!r} is not a completed trial")
    else:
        measured = noise.measure(study)
        numbers = measured.tied()[:MAX_TIED] if top_k is None else measured.ranked()[:top_k]
        by_number = {t.number: t for t in complete}
        chosen = [by_number[n] for n in numbers]
    configs = {f"trial_{t.number}": trial_config(t, spec, sets) for t in chosen}
    configs["baseline"] = spec.baseline_config(sets)
    return configs


def trial_config(
    t: optuna.trial.FrozenTrial, spec: StudySpec, sets: dict[str, Any]
) -> dict[str, Any]:
    """The config the trial trained: from its manifest, or rebuilt from its parameters."""
    manifest = TrialRecord.of(t).manifest
    if manifest is not None:
        return manifest_config(manifest)
    overrides = space.suggest(FixedTrial(t.params, t.number), spec.search_space)
    fixed = spec.fixed_config(sets)
    return spec.trainable().budget(spec.config_with(overrides, sets=sets), fixed)


class _TrackerSink(Sink):
    """A validation seed's reports go to its tracker run only: nothing prunes it."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def report(self, run: Run, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log(step, metrics)


def run_job(job: Job) -> tuple[str, dict[str, Any]]:
    """Train one (config, seed) to the end and have it score its best checkpoint on the test
    split; the row holds every val/ metric of its best report and every test/ metric."""
    trainable = load_trainable(job.entry)
    workdir = Path(job.workdir)
    tracker = tracker_for(job.tracking)
    meta = {"study": job.tracking.study, "label": job.label, "seed": job.seed}
    name = f"{job.label}_seed{job.seed}"
    with tracker.run(name, config=nest(job.config), kind="validate", meta=meta):
        run = Run(
            job.config,
            metric=job.metric,
            minimize=job.minimize,
            checkpoint_dir=workdir,  # a seed killed mid-training resumes from it
            sink=_TrackerSink(tracker),
            scores_test=True,
        )
        try:
            outcome = execute(trainable, run)
        except (KeyboardInterrupt, ContractError):
            raise
        except Exception as e:  # diverged, out of memory, the function's own exception
            raise StudyFailedError(f"{name} failed: {error_line(e)}") from e
        tracker.summarize({**outcome.test_metrics, f"best/{job.metric}": outcome.best_value})
    shutil.rmtree(workdir, ignore_errors=True)
    best = next(row for row in outcome.history if row["step"] == outcome.best_step)
    return job.key, {
        "seed": job.seed,
        **{k: v for k, v in best.items() if k.startswith("val/")},
        **outcome.test_metrics,
        "best_step": outcome.best_step,
        "steps": outcome.steps,
        "wall_time_s": round(outcome.wall_time_s, 2),
    }


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def validate(
    study: optuna.Study,
    configs: dict[str, dict[str, Any]],
    *,
    seeds: int,
    workers: int,
    progress: bool = True,
    tracking: Tracking | None = None,
    sequential: bool = False,
) -> dict[str, list[dict]]:
    """{label: one result row per seed, by seed}. Seeds stored in the study are read, not
    trained again. With `sequential` (one config against the baseline), seeds are added in rounds
    up to `seeds` and it stops at the first look of hpo.validation.sequential that decides; the
    rows are
    those of the seeds up to that look."""
    rounds = looks(seeds) if sequential and len(configs) == 2 else [seeds]
    metric = test_metric(study)
    jobs = _jobs(study, configs, seeds, tracking)
    stored = study.user_attrs
    results = {j.key: stored.get(j.key, stored.get(j.legacy_key)) for j in jobs}
    results = {key: result for key, result in results.items() if result is not None}
    bar = tqdm(
        total=len(jobs),
        initial=len(results),
        unit="run",
        desc="validate",
        disable=not progress,
    )
    pool = None
    if workers > 1:
        threads = max(1, torch.get_num_threads() // workers)
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(threads,))
    try:
        for n in rounds:
            upto = [j for j in jobs if j.seed < SEED_BASE + n]
            # one seeded config under two labels (the best trial is the study's baseline, as
            # trial 0 of sampler.baseline_first can be) is trained once and stored under both
            twins: dict[str, list[Job]] = {}
            for j in upto:
                if j.key not in results:
                    twins.setdefault(json.dumps(j.config, sort_keys=True), []).append(j)
            first = {same[0].key: same for same in twins.values()}
            todo = [same[0] for same in twins.values()]
            done = pool.imap_unordered(run_job, todo) if pool else map(run_job, todo)
            for key, result in done:
                for j in first[key]:
                    study.set_user_attr(j.key, result)  # stored at once: a rerun skips it
                    results[j.key] = result
                    bar.update()
            per_config = {
                label: [results[j.key] for j in upto if j.label == label] for label in configs
            }
            if len(rounds) > 1 and look(differences(per_config, metric), seeds).decided:
                bar.total = len(upto)  # settled: the rest of the seeds are not needed
                bar.refresh()
                break
    finally:
        if pool is not None:
            pool.close()
        bar.close()
    return per_config


def _jobs(
    study: optuna.Study,
    configs: dict[str, dict[str, Any]],
    seeds: int,
    tracking: Tracking | None = None,
) -> list[Job]:
    """One job per (config, seed), by seed within each config; its key names the stored result
    by the seeded config's digest, so a changed config is never mistaken for a stored one."""
    spec = StudySpec(**study.user_attrs["hpo.spec"])
    trainable = spec.trainable()
    root = runs_dir() / study.study_name / "validate"
    jobs = []
    for label, config in configs.items():
        for i in range(seeds):
            c = trainable.seeded(config, SEED_BASE + i)
            digest = _digest(c)
            jobs.append(
                Job(
                    label,
                    c,
                    SEED_BASE + i,
                    key=f"{ATTR}.{label}.{digest}",
                    workdir=str(root / "work" / f"{label}_{digest}"),
                    entry=spec.entry,
                    metric=spec.objective.metric,
                    minimize=spec.objective.minimize,
                    tracking=tracking or Tracking(),
                    # grouped as configs were before the seam: seeds stored then still count
                    legacy_key=f"{ATTR}.{label}.{_digest(nest(c))}",
                )
            )
    return jobs


def _digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class ValidateRequest:
    """What `hpo.validate` (or hpo.validate_winner) is asked for: each field means its flag."""

    study: str | None = None  # None: the study run last on this machine
    study_name: str | None = None
    storage: str | None = None
    seeds: int = 10
    fixed_seeds: bool = False
    trial: int | None = None
    top_k: int | None = None
    workers: int = 1
    progress: bool = True
    tracking: str | None = None
    tracking_uri: str | None = None


def validate_study(request: ValidateRequest, study: optuna.Study | None = None) -> dict:
    """Validate the study's winner (`study`, or the one the request names): train, score,
    report (files, the study's note, printed). Returns the report. UsageError for bad input."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if request.seeds < 2:
        raise UsageError(
            f"--seeds must be at least 2 to measure seed-to-seed noise, but got {request.seeds}"
        )
    if request.workers < 1 or (request.top_k is not None and request.top_k < 1):
        raise UsageError("--workers and --top-k must be at least 1")
    if study is None:
        name = stored_name(request.study, request.study_name)
        study = load_existing_study(name, request.storage)
    configs = configs_to_validate(study, trial=request.trial, top_k=request.top_k)
    spec = StudySpec(**study.user_attrs["hpo.spec"])
    trainable = spec.trainable()
    if request.workers > 1 and not importable(spec.entry):
        raise UsageError(
            f"--workers {request.workers}: worker processes cannot import {spec.entry!r} (a "
            "function defined in a notebook or a script run as __main__); use one worker"
        )
    for config in configs.values():  # every split, the test split included, before training
        trainable.preflight(config, splits=("train", "val", "test"))
    tracker = make_tracker(_tracking(study, request))  # a failure warns once; goes on untracked
    tracking = tracker.open_study(study, study.user_attrs.get("hpo.manifest", {})) or Tracking()
    sequential = not request.fixed_seeds and len(looks(request.seeds)) > 1
    if sequential and len(configs) > 2:
        print(
            f"note: seeds stop early only when one config is compared with the baseline; "
            f"with {len(configs) - 1} configs all {request.seeds} seeds are run",
            file=sys.stderr,
        )
        sequential = False
    # the plan is the comparison's first run's: a rerun with another --seeds goes on under it
    plan_key = f"{ATTR}.plan.{_digest(configs)}"
    stored_plan = study.user_attrs.get(plan_key)
    plan, note = settle_plan(stored_plan, seeds=request.seeds, sequential=sequential)
    if note:
        print(note, file=sys.stderr)
    if stored_plan is None:
        study.set_user_attr(plan_key, plan.to_json())
    seeds, sequential = plan.max_seeds, plan.sequential
    if seeds < MIN_PAIRS:
        print(
            f"warning: {seeds} paired seeds can never show a difference beyond seed-to-seed "
            f"noise (the smallest permutation p they can give is {smallest_p(seeds):.3g}); "
            f"use {MIN_PAIRS} or more, {ADVISED_PAIRS} advised",
            file=sys.stderr,
        )
    per_config = validate(
        study,
        configs,
        seeds=seeds,
        workers=request.workers,
        progress=request.progress,
        tracking=tracking,
        sequential=sequential,
    )
    rep = report(
        study,
        per_config,
        configs,
        max_seeds=seeds if sequential else None,
        pairing_keys=trainable.pairing_keys(),
    )
    for cmp in rep["comparisons"].values():
        if seq := cmp.get("sequential"):  # the look that decided, with the plan it followed
            look_json = {k: seq[k] for k in ("p_value", "boundary", "stopped_early")}
            study.set_user_attr(plan_key, {**plan.to_json(), "look": {"n": cmp["n"], **look_json}})
    out = write_report(study, rep, per_config)
    print(f"report in {out}; attached to study {study.study_name!r}", file=sys.stderr)
    where = tracker.close_study(study)
    if where:
        print(where, file=sys.stderr)
    return rep


def _tracking(study: optuna.Study, request: ValidateRequest) -> Tracking:
    """--tracking, else the study's own tracking settings."""
    spec_tracking = study.user_attrs["hpo.spec"].get("tracking") or {}
    return resolve_tracking(
        request.tracking or spec_tracking.get("backend"),
        uri=request.tracking_uri or spec_tracking.get("uri"),
        project=spec_tracking.get("project"),
        study=study.study_name,
    )
