"""The optimizer and its learning-rate schedule, built from `cfg.optim` and `cfg.schedule`.

Two param groups, always in this order: matrices (decayed), then norms, biases and gains (never
decayed). The schedule is a multiplier of optim.lr per step, so a resumed run with a new
optim.lr (population-based training) picks the schedule up where it stood.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from trainers.config import TrainConfig
from trainers.errors import ConfigError

Scheduler = torch.optim.lr_scheduler.LambdaLR


def make_optimizer(
    model: torch.nn.Module, *, cfg: TrainConfig, dev: torch.device
) -> torch.optim.Optimizer:
    """Weight decay on matrices only: decaying norms, biases and gains only hurts."""
    o = cfg.optim
    # fused Adam(W) kernels: one launch per step on CUDA, 4% more tokens/s on CPU
    # (benchmarks/results/trainer_throughput.md)
    fused = dev.type in ("cuda", "cpu") or None
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    betas = (o.beta1, o.beta2)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=betas, eps=o.eps, fused=fused)
    # weight decay here is L2 in the gradient, as Adam defines it
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, betas=betas, eps=o.eps, fused=fused)
    if o.nesterov and o.momentum == 0:
        raise ConfigError("optim.nesterov needs optim.momentum > 0, but got momentum=0")
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)


def make_scheduler(optimizer: torch.optim.Optimizer, *, cfg: TrainConfig) -> Scheduler:
    """Sets each step's rate to optim.lr * lr_factor(steps done); call .step() after each."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of optim.lr for the optimizer step that follows `step` completed ones: linear
    warmup, then decay that reaches the floor exactly on the last step (step max_steps - 1)."""
    s, max_steps = cfg.schedule, cfg.train.max_steps
    warmup = round(s.warmup_frac * max_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if s.name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, max_steps - 1 - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if s.name == "cosine" else 1 - progress
        return s.min_lr_frac + (1 - s.min_lr_frac) * decay

    return factor


def apply_optim_settings(
    optimizer: torch.optim.Optimizer, scheduler: Scheduler, *, cfg: TrainConfig
) -> None:
    """Put cfg's optimizer settings into restored param groups (matrices first, see
    make_optimizer), at the restored point of the schedule."""
    o = cfg.optim
    scheduler.base_lrs = [o.lr] * len(optimizer.param_groups)
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group, decay in zip(optimizer.param_groups, (o.weight_decay, 0.0), strict=True):
        group["initial_lr"], group["lr"], group["weight_decay"] = o.lr, o.lr * factor, decay
        if "betas" in group:
            group["betas"], group["eps"] = (o.beta1, o.beta2), o.eps
        if "momentum" in group:
            group["momentum"] = o.momentum
    # get_last_lr() reads this: the lr the next step uses, reported with its metrics
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
