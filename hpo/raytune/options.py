"""The Ray backend's flags and the study, checked before anything is started or stored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.errors import UsageError
from hpo.raytune.schedulers import PBT_SCHEDULERS, PRUNER_TO_SCHEDULER, pbt_mutations
from hpo.session import RunRequest
from hpo.storage import runs_dir
from hpo.study_spec import SCHEDULERS, StudySpec
from hpo.trainable import steps_of


@dataclass(frozen=True)
class RayOptions:
    """What the flags and the study settle for a Ray run."""

    address: str | None  # None: start a local Ray on this machine
    scheduler: str
    cpu: float
    gpu: float
    max_concurrent: int | None
    storage_path: str  # where Ray keeps experiment state and checkpoints (shared across nodes)
    mutations: tuple[str, ...] = ()  # PBT/PB2: the config keys they perturb
    timeout: float | None = None  # --timeout: stop starting trials after this many seconds
    keep_checkpoints: bool = False
    progress: bool = True


@dataclass(frozen=True)
class RayRequest:
    """The flags only `hpo.run --backend ray` reads (None: the study's own setting), and the
    run's display and checkpoint flags, which Ray's driver applies itself."""

    address: str | None = None
    scheduler: str | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    ray_storage: str | None = None
    progress: bool = True
    keep_checkpoints: bool = False


def check_options(
    request: RunRequest, ray: RayRequest, spec: StudySpec, sets: dict[str, Any]
) -> RayOptions:
    """Every Ray flag against the (checked) study, before anything is started or stored."""
    if request.workers not in (None, 1):
        raise UsageError(
            "--workers is for the Optuna backend; Ray runs trials side by side by itself "
            "(see --cpus-per-trial, --gpus-per-trial, --max-concurrent)"
        )
    if ray.scheduler and request.pruner:
        raise UsageError(
            "--pruner and --scheduler both say how to stop trials early; "
            "with --backend ray give --scheduler"
        )
    config = spec.fixed_config(sets)
    scheduler = ray.scheduler or spec.ray.scheduler
    scheduler = scheduler or PRUNER_TO_SCHEDULER[request.pruner or spec.pruner.name]
    if scheduler not in SCHEDULERS:
        raise UsageError(
            f"--scheduler must be one of {', '.join(SCHEDULERS)}, but got {scheduler!r}"
        )
    if spec.noise.seeds and scheduler in PBT_SCHEDULERS:
        raise UsageError(
            f"--noise-seeds (noise.seeds) cannot run with --scheduler {scheduler}: a member's "
            "value comes from weights it inherited and settings that changed on the way, which "
            "no run from scratch repeats; set noise.seeds to 0, or use another scheduler"
        )
    cpu = spec.ray.resources.cpu if ray.cpus_per_trial is None else ray.cpus_per_trial
    gpu = spec.ray.resources.gpu if ray.gpus_per_trial is None else ray.gpus_per_trial
    if request.trials_per_gpu is not None:
        if ray.gpus_per_trial is not None:
            raise UsageError("--trials-per-gpu K is --gpus-per-trial 1/K: give one of them")
        if request.trials_per_gpu < 1:
            raise UsageError(
                f"--trials-per-gpu must be at least 1, but got {request.trials_per_gpu}"
            )
        gpu = 1 / request.trials_per_gpu
    if cpu <= 0:
        raise UsageError(f"--cpus-per-trial must be positive, but got {cpu}")
    if gpu < 0 or (gpu > 1 and gpu != int(gpu)):
        raise UsageError(
            f"--gpus-per-trial must be a fraction of one GPU or a whole number, but got {gpu}"
        )
    if ray.max_concurrent is not None and ray.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be at least 1, but got {ray.max_concurrent}")
    min_resource, max_steps = spec.min_resource(config), steps_of(config)[0]
    if scheduler in ("asha", "hyperband", "median", *PBT_SCHEDULERS) and (
        min_resource is None or max_steps is None
    ):
        raise UsageError(
            f"--scheduler {scheduler} counts training steps: set train.max_steps and "
            "train.eval_interval among the trainer's settings (or use --scheduler fifo)"
        )
    if scheduler in ("asha", "hyperband", "median") and min_resource >= max_steps:
        raise UsageError(
            f"--scheduler {scheduler} needs evaluations before train.max_steps, but the first "
            f"one is at step {min_resource} of {max_steps}"
        )
    mutations: tuple[str, ...] = ()
    if scheduler in PBT_SCHEDULERS:
        mutations = pbt_mutations(spec, sets, scheduler)
    storage_path = ray.ray_storage or str((runs_dir() / "ray").resolve())
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())
    return RayOptions(
        address=ray.address,
        scheduler=scheduler,
        cpu=cpu,
        gpu=gpu,
        max_concurrent=ray.max_concurrent,
        storage_path=storage_path,
        mutations=mutations,
        timeout=request.timeout,
        keep_checkpoints=ray.keep_checkpoints,
        progress=ray.progress,
    )
