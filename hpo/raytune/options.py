"""The Ray backend's flags and the study, checked before anything is started or stored."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.errors import HPOError
from hpo.raytune.schedulers import PBT_SCHEDULERS, PRUNER_TO_SCHEDULER, pbt_mutations
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


def check_options(args: argparse.Namespace, spec: StudySpec, sets: dict[str, Any]) -> RayOptions:
    """Every Ray flag against the (checked) study, before anything is started or stored."""
    if args.workers not in (None, 1):
        raise HPOError(
            "--workers is for the Optuna backend; Ray runs trials side by side by itself "
            "(see --cpus-per-trial, --gpus-per-trial, --max-concurrent)"
        )
    if args.scheduler and args.pruner:
        raise HPOError(
            "--pruner and --scheduler both say how to stop trials early; "
            "with --backend ray give --scheduler"
        )
    config = spec.fixed_config(sets)
    scheduler = args.scheduler or spec.ray.scheduler
    scheduler = scheduler or PRUNER_TO_SCHEDULER[args.pruner or spec.pruner.name]
    if scheduler not in SCHEDULERS:
        raise HPOError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, but got {scheduler!r}")
    if spec.noise.seeds and scheduler in PBT_SCHEDULERS:
        raise HPOError(
            f"--noise-seeds (noise.seeds) cannot run with --scheduler {scheduler}: a member's "
            "value comes from weights it inherited and settings that changed on the way, which "
            "no run from scratch repeats; set noise.seeds to 0, or use another scheduler"
        )
    cpu = spec.ray.resources.cpu if args.cpus_per_trial is None else args.cpus_per_trial
    gpu = spec.ray.resources.gpu if args.gpus_per_trial is None else args.gpus_per_trial
    if args.trials_per_gpu is not None:
        if args.gpus_per_trial is not None:
            raise HPOError("--trials-per-gpu K is --gpus-per-trial 1/K: give one of them")
        if args.trials_per_gpu < 1:
            raise HPOError(f"--trials-per-gpu must be at least 1, but got {args.trials_per_gpu}")
        gpu = 1 / args.trials_per_gpu
    if cpu <= 0:
        raise HPOError(f"--cpus-per-trial must be positive, but got {cpu}")
    if gpu < 0 or (gpu > 1 and gpu != int(gpu)):
        raise HPOError(
            f"--gpus-per-trial must be a fraction of one GPU or a whole number, but got {gpu}"
        )
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise HPOError(f"--max-concurrent must be at least 1, but got {args.max_concurrent}")
    min_resource, max_steps = spec.min_resource(config), steps_of(config)[0]
    if scheduler in ("asha", "hyperband", "median", *PBT_SCHEDULERS) and (
        min_resource is None or max_steps is None
    ):
        raise HPOError(
            f"--scheduler {scheduler} counts training steps: set train.max_steps and "
            "train.eval_interval among the trainer's settings (or use --scheduler fifo)"
        )
    if scheduler in ("asha", "hyperband", "median") and min_resource >= max_steps:
        raise HPOError(
            f"--scheduler {scheduler} needs evaluations before train.max_steps, but the first "
            f"one is at step {min_resource} of {max_steps}"
        )
    mutations: tuple[str, ...] = ()
    if scheduler in PBT_SCHEDULERS:
        mutations = pbt_mutations(spec, sets, scheduler)
    storage_path = args.ray_storage or str((runs_dir() / "ray").resolve())
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())
    return RayOptions(
        address=args.address,
        scheduler=scheduler,
        cpu=cpu,
        gpu=gpu,
        max_concurrent=args.max_concurrent,
        storage_path=storage_path,
        mutations=mutations,
    )
