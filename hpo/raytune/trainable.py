"""What runs on the Ray workers: one trial trained, each evaluation reported with a checkpoint.

Ray pickles run_trial by its module path, so this module must import on every node.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from hpo.budget import equal_compute, resource, tokens_per_step
from hpo.manifest import trial_manifest
from hpo.objective import data_for, diverged_value
from hpo.raytune.search import trial_config
from hpo.record import DIVERGED, ERROR, OUT_OF_MEMORY
from hpo.study_spec import StudySpec
from trainers import (
    DivergedError,
    OutOfMemoryError,
    TrainConfig,
    TrainerError,
    TrainResult,
    resolve_seeds,
    train,
)
from trainers.data import Data
from trainers.device import resolve_device
from trainers.model import build_model, count_params

ORIGIN = "origin.json"  # in each checkpoint: whose state it is and at which step


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its config (shipped once to the workers)."""

    spec: dict[str, Any]  # StudySpec.to_json(): workers need not see the YAML file
    sets: dict[str, Any]
    threads: int


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """One Ray trial: train with the trial's config, report every evaluation with a checkpoint.

    Restored (a retry after a crash, or PBT copying a better member): continue from the
    checkpoint Ray hands over, with this trial's current config.
    """
    torch.set_num_threads(setup.threads)
    spec = StudySpec(**setup.spec)
    # steps Ray sees are the fixed config's, at equal tokens (hpo.budget)
    base = spec.train_config(setup.sets)
    cfg = equal_compute(trial_config(config, spec, setup.sets), base)
    data = data_for(cfg)
    work = Path(tune.get_context().get_trial_dir()) / "hpo-checkpoint"
    reporter = Reporter(cfg, base, data, work, spec=spec)
    try:
        # a retry resumes from its checkpoint; a PBT member from its donor's, with its own settings
        options = {"checkpoint_dir": work, "resume": True, "allow_changes": True, "data": data}
        result = train(cfg, report=reporter.report, **options)
    except TrainerError as e:  # diverged, out of memory, a config it cannot run
        shutil.rmtree(work, ignore_errors=True)
        reporter.failed(e)
        return
    except BaseException:  # stopped or paused by the scheduler (SystemExit), or a crash
        shutil.rmtree(work, ignore_errors=True)  # what matters was reported with a checkpoint
        raise
    reporter.finished(result)
    shutil.rmtree(work, ignore_errors=True)


class Reporter:
    """Tells Tune about one start of a trial function: each evaluation (with a checkpoint),
    then how it ended. Every row carries what the driver's Recorder writes into the study."""

    def __init__(
        self, cfg: TrainConfig, base: TrainConfig, data: Data, work: Path, *, spec: StudySpec
    ) -> None:
        self.cfg, self.base, self.data, self.work, self.spec = cfg, base, data, work, spec
        self.metric = spec.objective.metric
        self.me = tune.get_context().get_trial_id()
        self.origin = _restore(work)
        self.static = {
            "hpo/segment": uuid.uuid4().hex[:12],  # one per start of the trial function
            "hpo/restored_from": self.origin["trial_id"],  # this trial's checkpoint or a donor's
            "hpo/restored_step": self.at(self.origin["step"]),
            "hpo/node_id": ray.get_runtime_context().get_node_id(),
            "hpo/pid": os.getpid(),
            "hpo/max_steps": self.at(cfg.train.max_steps),
            "hpo/n_params": _n_params(cfg, data),
        }
        self.device, self.seeds = str(resolve_device(cfg.train.device)), resolve_seeds(cfg)
        self.started = time.perf_counter()
        self.clock = {"step": self.origin["step"], "tokens": 0.0, "seconds": 0.0}
        self.last: dict[str, Any] = {}

    def at(self, step: int) -> int:
        return resource(step, self.cfg, self.base)

    def report(self, step: int, metrics: dict[str, float]) -> None:
        (self.work / ORIGIN).write_text(json.dumps({"trial_id": self.me, "step": step}))
        tokens = (step - self.clock["step"]) * tokens_per_step(self.cfg)
        self.clock.update(step=step, tokens=self.clock["tokens"] + tokens)
        self.clock["seconds"] += tokens / max(metrics["system/tokens_per_s"], 1e-9)
        self.last = self._row(step, metrics, "running")
        checkpoint = tune.Checkpoint.from_directory(str(self.work))
        tune.report(dict(self.last), checkpoint=checkpoint)

    def failed(self, e: TrainerError) -> None:
        """Deterministic, so a retry would fail again: the trial ends here. A diverged trial
        is pruned with a bad value, as with the Optuna backend (hpo.objective)."""
        reason = {DivergedError: DIVERGED, OutOfMemoryError: OUT_OF_MEMORY}.get(type(e), ERROR)
        if isinstance(e, DivergedError):
            value, step = diverged_value(e, self.spec, self.data), self.at(e.step)
        else:
            value, step = self.spec.objective.worst, self.last.get("step", 0)
        failed = {"hpo/failed": reason, "hpo/fail_reason": str(e)}
        tune.report({**self.static, **self.last, self.metric: value, "step": step, **failed})

    def finished(self, result: TrainResult) -> None:
        # restored at its last step (PBT may exploit there), nothing was left to train: the
        # checkpoint's last evaluation stands
        history = result.history or [{}]
        metrics = result.metrics or {k: v for k, v in history[-1].items() if k != "step"}
        if not metrics:
            metrics = {self.metric: self.spec.objective.worst}
        row = self._row(result.steps, metrics, result.stop_reason)
        tune.report({**row, "hpo/done": 1, "hpo/stop_reason": result.stop_reason})

    def _row(self, step: int, metrics: dict[str, float], stop_reason: str) -> dict[str, Any]:
        run = {"data": self.data.info(), "seeds": self.seeds, "device": self.device}
        manifest = trial_manifest(self.cfg, steps=step, stop_reason=stop_reason, **run)
        return {
            **self.static,
            **metrics,  # val/loss, val/bpb, train/loss, lr, system/...: schedulers read them
            "step": self.at(step),
            "hpo/tokens": step * tokens_per_step(self.cfg),
            "hpo/max_tokens": self.cfg.train.max_steps * tokens_per_step(self.cfg),
            "hpo/metrics": json.dumps(metrics),
            "hpo/tokens_per_s": round(self.clock["tokens"] / max(self.clock["seconds"], 1e-9), 1),
            "hpo/wall_time_s": round(time.perf_counter() - self.started, 3),
            "hpo/manifest": json.dumps(manifest, default=str),
        }


def _restore(work: Path) -> dict[str, Any]:
    """An empty folder for the trial's checkpoints, or the checkpoint Ray hands over (a retry,
    a restored experiment, PBT's exploit): whose state it is and at which step."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    restored = tune.get_checkpoint()
    if restored is None:
        return {"trial_id": "", "step": 0}
    restored.to_directory(str(work))
    return json.loads((work / ORIGIN).read_text())


def _n_params(cfg: TrainConfig, data: Data) -> int:
    """Parameter count without allocating the weights (a meta-device model)."""
    try:
        with torch.device("meta"):
            return count_params(build_model(cfg.model, data.vocab_size))
    except Exception:  # a model family that cannot be built on the meta device
        return 0
