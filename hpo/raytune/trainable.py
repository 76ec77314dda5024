"""What runs on the Ray workers: one trial trained, each evaluation reported with a checkpoint.

Ray pickles run_trial by its module path, so this module must import on every node.
"""

from __future__ import annotations

import json
import math
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

from hpo.manifest import trial_manifest
from hpo.raytune.search import trial_config
from hpo.study_spec import StudySpec
from trainers import (
    DivergedError,
    OutOfMemoryError,
    TrainConfig,
    TrainerError,
    TrainResult,
    UsageError,
    resolve_seeds,
    train,
)
from trainers.data import Data, load_data
from trainers.device import resolve_device
from trainers.model import build_model, count_params

ORIGIN = "origin.json"  # in each checkpoint: whose state it is and at which step


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its config (shipped once to the workers)."""

    spec: dict[str, Any]  # StudySpec.to_json(): workers need not see the YAML file
    sets: dict[str, Any]
    threads: int
    direction: str


_DATA: dict[str, Data] = {}  # tokenized splits, per worker process


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """One Ray trial: train with the trial's config, report every evaluation with a checkpoint.

    Restored (a retry after a crash, or PBT copying a better member): continue from the
    checkpoint Ray hands over, with this trial's current config.
    """
    torch.set_num_threads(setup.threads)
    me = tune.get_context().get_trial_id()
    spec = StudySpec(**setup.spec)
    metric = spec.objective.metric
    cfg = trial_config(config, spec, setup.sets)
    key = repr((cfg.data, cfg.model.block_size))
    if key not in _DATA:
        _DATA[key] = load_data(cfg.data, block_size=cfg.model.block_size)
    data = _DATA[key]
    work = Path(tune.get_context().get_trial_dir()) / "hpo-checkpoint"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    origin = {"trial_id": "", "step": 0}
    restored = tune.get_checkpoint()
    if restored is not None:
        restored.to_directory(str(work))
        origin = json.loads((work / ORIGIN).read_text())
    static = {
        "hpo/segment": uuid.uuid4().hex[:12],  # one per start of this function
        "hpo/restored_from": origin["trial_id"],  # whose checkpoint: this trial's, or a donor's
        "hpo/restored_step": origin["step"],
        "hpo/node_id": ray.get_runtime_context().get_node_id(),
        "hpo/pid": os.getpid(),
        "hpo/max_steps": cfg.train.max_steps,
        "hpo/params": _n_params(cfg, data),
    }
    device, seeds = str(resolve_device(cfg.train.device)), resolve_seeds(cfg)
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size
    t0, clock = time.perf_counter(), {"step": origin["step"], "tokens": 0.0, "seconds": 0.0}
    last: dict[str, Any] = {}

    def report(step: int, metrics: dict[str, float]) -> None:
        (work / ORIGIN).write_text(json.dumps({"trial_id": me, "step": step}))
        tokens = (step - clock["step"]) * tokens_per_step
        clock.update(step=step, tokens=clock["tokens"] + tokens)
        clock["seconds"] += tokens / max(metrics["system/tokens_per_s"], 1e-9)
        so_far = TrainResult(
            best_val_loss=math.nan, best_step=0, metrics=metrics, steps=step,
            tokens=step * tokens_per_step, wall_time_s=time.perf_counter() - t0,
            tokens_per_s=clock["tokens"] / max(clock["seconds"], 1e-9),
            n_params=static["hpo/params"], stop_reason="running", data=data.info(), seeds=seeds,
            device=device, resumed_from=origin["step"],
        )  # fmt: skip
        last.clear()
        last.update(_row(step, metrics, so_far, cfg, static))
        tune.report(dict(last), checkpoint=tune.Checkpoint.from_directory(str(work)))

    worst = math.inf if setup.direction == "minimize" else -math.inf
    try:
        result = train(cfg, report=report, checkpoint_dir=work, resume=True, allow_changes=True,
                       data=data)  # fmt: skip
    except (DivergedError, OutOfMemoryError, TrainerError, UsageError) as e:
        shutil.rmtree(work, ignore_errors=True)
        # deterministic: retrying would fail again, so the trial ends here as FAIL
        reason = {DivergedError: "diverged", OutOfMemoryError: "out_of_memory"}.get(type(e))
        tune.report(
            {**static, **last, metric: worst, "step": getattr(e, "step", last.get("step", 0)),
             "hpo/failed": reason or "error", "hpo/fail_reason": str(e)}
        )  # fmt: skip
        return
    except BaseException:  # stopped or paused by the scheduler (SystemExit), or a crash
        shutil.rmtree(work, ignore_errors=True)  # what matters was reported with a checkpoint
        raise
    # restored at its last step (PBT may exploit there), nothing was left to train: the
    # checkpoint's last evaluation stands
    metrics = result.metrics or {
        k: v for k, v in (result.history or [{}])[-1].items() if k != "step"
    }
    row = _row(result.steps, metrics or {metric: worst}, result, cfg, static)
    tune.report({**row, "hpo/done": 1, "hpo/stop_reason": result.stop_reason})
    shutil.rmtree(work, ignore_errors=True)


def _row(step, metrics, result: TrainResult, cfg: TrainConfig, static) -> dict[str, Any]:
    return {
        **static,
        **metrics,  # val/loss, val/bpb, train/loss, lr, system/...: the schedulers read the metric
        "step": step,
        "hpo/metrics": json.dumps(metrics),
        "hpo/tokens_per_s": round(result.tokens_per_s, 1),
        "hpo/wall_time_s": round(result.wall_time_s, 3),
        "hpo/manifest": json.dumps(trial_manifest(cfg, result), default=str),
    }


def _n_params(cfg: TrainConfig, data: Data) -> int:
    """Parameter count without allocating the weights (a meta-device model)."""
    try:
        with torch.device("meta"):
            return count_params(build_model(cfg.model, data.vocab_size))
    except Exception:  # a model family that cannot be built on the meta device
        return 0
