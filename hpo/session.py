"""The service core every way of running a study goes through. hpo.run, hpo.worker and the
Ray backend call it with dataclasses, never with an argv:

    request = RunRequest(study="lr_sweep", trials=100)
    checked = load_request(request)           # every input checked; nothing stored yet
    study, plan = open_study(request, checked)   # created or resumed; what workers follow
    code = run_study(study, plan)             # banner, workers, clean-up, summary

    study, plan = join_study(JoinRequest(study="lr_sweep", storage=url))   # hpo.worker

One worker's loop and the supervision of several worker processes live in hpo.trial_loop; the plan
they follow in hpo.plan.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import optuna
import pydantic

from hpo.devices import Placement, place_workers
from hpo.errors import StudyFailedError, UsageError
from hpo.manifest import study_manifest
from hpo.noise import STOPPED
from hpo.objective import COUNTED, clean_checkpoints
from hpo.plan import WorkerPlan
from hpo.progress import Progress, summary
from hpo.storage import (
    load_existing_study,
    lost_storage,
    masked,
    open_storage,
    public_url,
    remember_last_study,
    runs_dir,
    storage_failure,
    storage_url,
)
from hpo.study_spec import NoiseSpec, StudySpec, baseline_params, check_spec, load_study_spec
from hpo.tracking import Tracking, make_tracker, resolve_tracking, tracking_from_study
from hpo.trainable import importable
from hpo.trial_loop import supervise
from trainers import parse_sets

TRAINING_SPLITS = ("train", "val")  # what tuning reads; hpo.validate adds "test"

log = logging.getLogger(__name__)
WAIT_POLL_S = 2.0


@dataclass(frozen=True)
class RunRequest:
    """What a user asks `hpo.run` for (every field has the meaning of its flag)."""

    study: str = "lr_sweep"  # a shipped study's name, or a YAML path
    spec: StudySpec | None = None  # the study itself, instead of a file (hpo.tune)
    study_name: str | None = None  # the name in the storage (default: the study's)
    trials: int | None = None  # the total to reach (default: the study's)
    timeout: float | None = None
    sets: tuple[str, ...] = ()  # KEY=VALUE
    device: str | None = None
    sampler: str | None = None
    pruner: str | None = None
    seed: int | None = None
    noise_seeds: int | None = None  # the study's noise.seeds, overridden
    stop_below_noise: bool | None = None  # the study's noise.stop_below_noise, overridden
    workers: int | None = None  # None: 1, or with GPUs one per GPU (times trials_per_gpu)
    trials_per_gpu: int | None = None
    storage: str | None = None
    tracking: str | None = None
    tracking_uri: str | None = None
    verbose: bool = False
    check_device: bool = True  # False on a Ray driver: trials get their devices on the nodes


@dataclass(frozen=True)
class JoinRequest:
    """What `hpo.worker` asks for: a study that hpo.run created, from any machine."""

    study: str | None  # None: the study run last on this machine
    storage: str | None = None
    workers: int | None = None  # as RunRequest.workers
    trials_per_gpu: int | None = None
    timeout: float | None = None
    wait: float = 0.0  # seconds to wait for the study to be created
    verbose: bool = False


class Checked(NamedTuple):
    """A run's inputs once checked: the study, its --set values, its workers on this machine."""

    spec: StudySpec
    sets: dict[str, Any]
    n_workers: int
    placement: Placement | None  # the GPUs the workers use, if any


def load_request(request: RunRequest) -> Checked:
    """The study spec, the --set values and the workers' placement, every input checked.
    Nothing is stored."""
    sets = parse_sets(list(request.sets))
    if request.device:
        sets["train.device"] = request.device
    _check_workers_and_timeout(request.workers, request.timeout)
    if request.trials is not None and request.trials < 1:
        raise UsageError(f"--trials must be at least 1, but got {request.trials}")
    if request.seed is not None and not 0 <= request.seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32), but got {request.seed}")
    if request.spec is not None:
        spec = request.spec
        check_spec(spec, spec.path or spec.name, sets)
    else:
        spec = load_study_spec(request.study, sets=sets)
    spec = with_noise(spec, request.noise_seeds, request.stop_below_noise)
    # the data and the device, as every trial will use them: a problem here is the user's to
    # fix, and is reported before the study is created
    config = spec.fixed_config(sets)
    spec.trainable().preflight(config, splits=TRAINING_SPLITS, device=request.check_device)
    n_workers, placement = place_workers(
        workers=request.workers, trials_per_gpu=request.trials_per_gpu, device=_device(config)
    )
    local = [name for name in (spec.entry, *spec.search_space) if not importable(name)]
    if n_workers > 1 and local:
        raise UsageError(
            f"--workers {n_workers}: worker processes cannot import {local[0]!r} (a function "
            "defined in a notebook or a script run as __main__); move it into a module, or "
            "run one worker"
        )
    return Checked(spec, sets, n_workers, placement)


def _device(config: dict[str, Any]) -> str:
    """The device the trainer is told to use (train.device), "auto" when it says none."""
    return str(config.get("train.device", "auto"))


def with_noise(spec: StudySpec, seeds: int | None, stop: bool | None) -> StudySpec:
    """The spec with --noise-seeds and --stop-below-noise applied (and checked)."""
    changes = {k: v for k, v in [("seeds", seeds), ("stop_below_noise", stop)] if v is not None}
    if not changes:
        return spec
    try:
        noise = NoiseSpec(**{**spec.noise.model_dump(), **changes})
    except pydantic.ValidationError as e:
        error = e.errors()[0]
        flag = "--noise-seeds" if error["loc"] == ("seeds",) else "--stop-below-noise"
        message = error["msg"].removeprefix("Value error, ")
        raise UsageError(f"{flag}: {message}") from None
    return spec.model_copy(update={"noise": noise})


def _check_workers_and_timeout(workers: int | None, timeout: float | None) -> None:
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, but got {workers}")
    if timeout is not None and not 0 < timeout < math.inf:
        raise UsageError(f"--timeout must be a positive number of seconds, but got {timeout}")


def open_study(request: RunRequest, checked: Checked) -> tuple[optuna.Study, WorkerPlan]:
    """Create the study (or resume it) and store what every worker needs on it."""
    spec, sets = checked.spec, checked.sets
    url = storage_url(request.storage)
    name = request.study_name or spec.name
    study = optuna.create_study(
        study_name=name,
        storage=open_storage(url),
        direction=spec.objective.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != spec.objective.direction:
        raise UsageError(
            f"study {name!r} in the storage was created to {study.direction.name.lower()}, "
            f"but the spec says {spec.objective.direction}; use another --study-name"
        )
    previous = study.user_attrs.get("hpo.sets")
    if previous is not None and previous != sets:
        log.warning(
            "study %r was run before with --set %s, now %s: its trials may not be comparable",
            *(name, previous, sets),
        )
    search = {
        "sampler": request.sampler or spec.sampler.name,
        "pruner": request.pruner or spec.pruner.name,
        "seed": request.seed if request.seed is not None else spec.sampler.seed,
    }
    target = request.trials or spec.trials
    for key, value in [
        ("hpo.spec", spec.to_json()),
        ("hpo.sets", sets),
        ("hpo.target", target),
        ("hpo.search", search),
        # what started the latest run of the study (each trial has its own manifest)
        ("hpo.manifest", study_manifest(spec=spec.to_json(), sets=sets, **search)),
    ]:
        study.set_user_attr(key, value)
    if spec.sampler.baseline_first and not study.get_trials(deepcopy=False):
        # a new study: its first trial, whichever backend or worker asks first, is the baseline
        study.enqueue_trial(baseline_params(spec, sets))
    if not spec.noise.stop_below_noise and study.user_attrs.get(STOPPED):
        # stopped by the rule before, now run on without it (Optuna cannot delete an attribute)
        study.set_user_attr(STOPPED, None)
    remember_last_study(name, url, spec.path)
    tracking = resolve_tracking(
        request.tracking or spec.tracking.backend,
        uri=request.tracking_uri or spec.tracking.uri,
        project=spec.tracking.project,
        study=name,
    )
    plan = _plan(study, url, sets, search, target, checked.n_workers, tracking, request.verbose)
    return study, replace(plan, timeout=request.timeout, placement=checked.placement)


def join_study(request: JoinRequest) -> tuple[optuna.Study, WorkerPlan]:
    """The study as hpo.run stored it, and a plan to work on it exactly as it was started."""
    _check_workers_and_timeout(request.workers, request.timeout)
    study = _wait_for_study(request)
    attrs = study.user_attrs
    if "hpo.spec" not in attrs or "hpo.target" not in attrs:
        raise UsageError(
            f"study {study.study_name!r} was not created by hpo.run (no spec stored on it); "
            "start it with python -m hpo.run first"
        )
    spec, sets = StudySpec(**attrs["hpo.spec"]), attrs.get("hpo.sets", {})
    config = spec.fixed_config(sets)
    # this machine: its device, its copy of the data
    spec.trainable().preflight(config, splits=TRAINING_SPLITS)
    n_workers, placement = place_workers(
        workers=request.workers, trials_per_gpu=request.trials_per_gpu, device=_device(config)
    )
    search = {"sampler": "tpe", "pruner": "hyperband", "seed": 0, **attrs.get("hpo.search", {})}
    url = storage_url(request.storage)
    tracking = tracking_from_study(study)  # the tracker the study was started with
    target, verbose = attrs["hpo.target"], request.verbose
    plan = _plan(study, url, sets, search, target, n_workers, tracking, verbose)
    # a seed offset of its own per machine and process: workers started at the same moment
    # on several machines must not sample the same start-up points
    index = zlib.crc32(f"{os.uname().nodename}:{os.getpid()}".encode())
    return study, replace(plan, index=index, timeout=request.timeout, placement=placement)


def _plan(study, url, sets, search, target, n_workers, tracking, verbose) -> WorkerPlan:
    return WorkerPlan(
        spec=study.user_attrs["hpo.spec"],
        study_name=study.study_name,
        url=url,
        sets=sets,
        sampler=search["sampler"],
        pruner=search["pruner"],
        seed=search["seed"],
        target=target,
        n_workers=n_workers,
        checkpoint_root=str(runs_dir() / study.study_name / "checkpoints"),
        threads=max(1, (os.cpu_count() or 1) // n_workers),
        tracking=tracking,
        verbose=verbose,
    )


def _wait_for_study(request: JoinRequest) -> optuna.Study:
    """The study once hpo.run has created and set it up, waiting up to `request.wait` s."""
    deadline = time.monotonic() + request.wait
    while True:
        try:
            study = load_existing_study(request.study, request.storage)
            if "hpo.target" in study.user_attrs or time.monotonic() >= deadline:
                return study
        except UsageError:  # no such study yet
            if time.monotonic() >= deadline:
                raise
        time.sleep(WAIT_POLL_S)


def banner(study: optuna.Study, plan: WorkerPlan, engine: str) -> str:
    """The first lines of a run: where the study is, how far it is, and how to watch it."""
    done = sum(t.state in COUNTED for t in study.get_trials(deepcopy=False))
    shown = public_url(plan.url)
    password = " (its password from PGPASSWORD or ~/.pgpass)" if shown != plan.url else ""
    return (
        f"study {plan.study_name!r} in {masked(plan.url)}: {done}/{plan.target} trials done; "
        f"{engine}\nwatch it: optuna-dashboard {shown}{password}"
    )


def run_study(
    study: optuna.Study, plan: WorkerPlan, *, progress: bool = True, keep_checkpoints: bool = False
) -> int:
    """Run the study's workers to its target: the banner, a live display, the clean-up of
    checkpoints and the summary. Returns the exit code; Ctrl-C is raised again once the summary
    is out (no trial is left running)."""
    tracker = make_tracker(plan.tracking)  # a failure warns once, and workers track nothing
    opened = tracker.open_study(study, study.user_attrs["hpo.manifest"])
    plan = replace(plan, tracking=opened or Tracking(), keep_checkpoints=keep_checkpoints)
    engine = f"{plan.sampler} + {plan.pruner}, {plan.n_workers} worker(s)"
    if plan.placement is not None:
        engine += f" on {plan.placement.describe(plan.n_workers)}"
    print(banner(study, plan, engine), file=sys.stderr)
    metric = plan.study_spec.objective.metric
    display = Progress(
        plan.target, study.get_trials(deepcopy=False), metric=metric, enabled=progress
    )
    start = time.time()
    try:
        failure = supervise(plan, study, display)
    except Exception as e:
        lost = storage_failure(e)
        if lost is None:
            raise
        raise StudyFailedError(lost_storage(plan.url, lost)) from e
    if not keep_checkpoints:
        clean_checkpoints(study, Path(plan.checkpoint_root))
    print(summary(study, target=plan.target, wall_time_s=time.time() - start), file=sys.stderr)
    where = tracker.close_study(study)  # MLflow: best values on the study's run; W&B: sync
    if where:
        print(where, file=sys.stderr)
    if failure is not None:
        raise failure  # Ctrl-C, or a study that cannot go on: its line comes last
    return 0
