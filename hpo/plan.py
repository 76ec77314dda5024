"""The plan every worker of a study follows: what hpo.run and hpo.worker settle before the
first trial, handed to each worker process (it crosses into spawned processes: picklable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hpo.devices import Placement
from hpo.study_spec import StudySpec
from hpo.tracking import Tracking


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker process needs (picklable, for spawned processes)."""

    spec: dict[str, Any]  # the validated study spec (StudySpec.to_json), as stored on the study
    study_name: str
    url: str
    sets: dict[str, Any]
    sampler: str
    pruner: str
    seed: int
    target: int
    n_workers: int
    index: int = 0  # offsets this worker's sampler seed
    timeout: float | None = None
    checkpoint_root: str = ""
    threads: int = field(default_factory=lambda: torch.get_num_threads())
    tracking: Tracking = field(default_factory=Tracking)  # each worker builds its own tracker
    verbose: bool = False  # Optuna's own log lines (a failed trial's traceback) as well
    placement: Placement | None = None  # the GPUs this machine's workers use (hpo.devices)
    gpu: str | None = None  # this worker's, as CUDA_VISIBLE_DEVICES names it
    keep_checkpoints: bool = False  # else those of trials that can no longer win go at once

    @property
    def shares_gpu(self) -> bool:
        """Other workers of this machine train on this worker's GPU too."""
        return self.placement is not None and self.n_workers > len(self.placement.gpus)

    @property
    def study_spec(self) -> StudySpec:
        return StudySpec(**self.spec)
