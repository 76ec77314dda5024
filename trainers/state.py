"""TrainState: where a run has got to, all of it that last.pt saves and a resumed run restores.

A run resumed from last.pt continues exactly as the uninterrupted run would have: the same
weights, optimizer moments, point of the schedule, loss scale, and random streams (the data
order and dropout), and the same record of evaluations so far.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainers import checkpoint
from trainers.config import TrainConfig
from trainers.data import BatchSampler
from trainers.optim import Scheduler, apply_optim_settings

log = logging.getLogger(__name__)

# Settings a resumed run may change and still continue from its checkpoint, when the caller
# allows it (population-based training perturbs them after copying a better run's state): the
# new values apply from the resumed step on, to the restored weights and optimizer moments.
CHANGEABLE_ON_RESUME = frozenset(
    {
        "optim.lr",
        "optim.weight_decay",
        "optim.beta1",
        "optim.beta2",
        "optim.eps",
        "optim.momentum",
        "optim.grad_clip",
        "model.dropout",
        "train.label_smoothing",
        "train.patience",
    }
)


@dataclass
class TrainState:
    # what trains: restored from last.pt by load_state_dict
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    scaler: torch.amp.GradScaler  # float16 loss scaling (a no-op unless train.dtype=float16)
    sampler: BatchSampler  # its generator is the data order
    # how far it got: restored from last.pt
    step: int = 0  # optimizer steps taken, including those before a resume
    best_loss: float = math.inf  # best val/loss so far
    best_step: int = 0  # the step best.pt holds
    evals_since_best: int = 0  # for train.patience
    history: list[dict[str, float]] = field(default_factory=list)  # one row per evaluation
    # this session only, never saved
    resumed_from: int = 0  # the step it resumed at (0: fresh)
    train_time: float = 0.0  # seconds spent in training steps (evaluations aside)
    metrics: dict[str, float] = field(default_factory=dict)  # at the latest evaluation

    def record(self, metrics: dict[str, float]) -> bool:
        """Add this step's evaluation to the history; True when its val/loss is the best yet."""
        self.metrics = metrics
        self.history.append({"step": self.step, **metrics})
        val_loss = metrics["val/loss"]
        improved = val_loss < self.best_loss
        if improved:
            self.best_loss, self.best_step, self.evals_since_best = val_loss, self.step, 0
        else:
            self.evals_since_best += 1
        return improved

    def save(self, ckpt_dir: Path, *, cfg: TrainConfig, best: bool) -> None:
        """Write last.pt, and best.pt too when this evaluation is the best so far."""
        weights = self.model.state_dict()
        # best.pt first: a crash between the two writes must not leave a last.pt whose best_step
        # points at weights that were never saved
        if best:
            checkpoint.save(
                ckpt_dir / checkpoint.BEST,
                {"model": weights, "config": cfg.to_dict(), "step": self.step},
            )
        checkpoint.save(
            ckpt_dir / checkpoint.LAST,
            {
                "model": weights,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": checkpoint.rng_state(self.sampler.generator),
                "config": cfg.to_dict(),
                "step": self.step,
                "best_loss": self.best_loss,
                "best_step": self.best_step,
                "evals_since_best": self.evals_since_best,
                "history": self.history,
            },
        )

    def resume(self, ckpt_dir: Path, *, cfg: TrainConfig, allow_changes: bool) -> None:
        """Continue from ckpt_dir's last.pt when it is this config's (or, when allowed, differs
        only in CHANGEABLE_ON_RESUME keys); else stay fresh."""
        saved = checkpoint.load(ckpt_dir / checkpoint.LAST)
        if saved is None:
            return
        changed = changed_keys(saved["config"], cfg)
        if changed and not (allow_changes and changed <= CHANGEABLE_ON_RESUME):
            log.warning("checkpoint in %s is for another config; starting fresh", ckpt_dir)
            return
        self.restore(saved)
        # load_state_dict brought back the checkpoint's lr and decay
        if changed:
            apply_optim_settings(self.optimizer, self.scheduler, cfg=cfg)

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a loaded last.pt (checkpoint.load): the inverse of `save`."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        checkpoint.restore_rng(saved["rng"], self.sampler.generator)
        self.step = saved["step"]
        self.best_loss, self.best_step = saved["best_loss"], saved["best_step"]
        self.evals_since_best, self.history = saved["evals_since_best"], saved["history"]
        self.resumed_from = self.step


def changed_keys(saved: dict[str, dict[str, Any]], cfg: TrainConfig) -> set[str]:
    """Dotted keys whose value in a checkpoint's config differs from `cfg`."""
    old = {f"{g}.{k}": v for g, values in saved.items() for k, v in values.items()}
    now = cfg.flat()
    return {k for k in old.keys() | now.keys() if old.get(k) != now.get(k)}
