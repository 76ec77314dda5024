"""The training loop: `train(cfg, report=...) -> TrainResult`. Knows nothing of tuning.

Every `train.eval_interval` steps the model is measured on fixed validation windows and
`report(step, metrics)` is called; a callback stops the run early by raising `StopTraining`
(the result then says why) or any other exception (which propagates). On CUDA the step loop
never waits for the GPU except at log and eval points.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from trainers import checkpoint
from trainers import device as devices
from trainers.config import TrainConfig
from trainers.data import EVAL_BATCH_SIZE, BatchSampler, Data, eval_windows, load_data
from trainers.errors import ConfigError, DivergedError, OutOfMemoryError, TrainerError
from trainers.model import build_model, count_params

log = logging.getLogger(__name__)

Report = Callable[[int, dict[str, float]], None]

# Settings a resumed run may change and still continue from its checkpoint, when the caller
# allows it (population-based training perturbs them after copying a better run's state): the
# new values apply from the resumed step on, to the restored weights and optimizer moments.
CHANGEABLE_ON_RESUME = frozenset(
    {"optim.lr", "optim.weight_decay", "optim.beta1", "optim.beta2", "optim.eps",
     "optim.momentum", "optim.grad_clip", "model.dropout", "train.label_smoothing",
     "train.patience"}
)  # fmt: skip


class StopTraining(Exception):
    """Raised by a report callback to end training early; `reason` becomes the stop reason."""

    def __init__(self, reason: str = "stopped") -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class TrainResult:
    best_val_loss: float
    best_step: int
    metrics: dict[str, float]  # at the last evaluation: val/loss, val/bpb, train/loss, system/...
    steps: int  # optimizer steps taken in total (including those before a resume)
    tokens: int  # training tokens seen
    wall_time_s: float
    tokens_per_s: float
    n_params: int
    stop_reason: str  # max_steps | early_stopped | whatever a StopTraining said
    history: list[dict[str, float]] = field(default_factory=list)  # one row per evaluation
    data: dict[str, Any] = field(default_factory=dict)  # corpus fingerprint, tokenizer, sizes
    seeds: dict[str, int] = field(default_factory=dict)
    device: str = "cpu"
    checkpoint: str | None = None  # best.pt, when a checkpoint_dir was given
    resumed_from: int = 0  # step the run resumed at (0: fresh)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_seeds(cfg: TrainConfig) -> dict[str, int]:
    """Separate, reproducible seeds for initialisation, data order and dropout."""

    def derived(k: int) -> int:
        return int(np.random.SeedSequence([cfg.train.seed, k]).generate_state(1)[0])

    data = cfg.data.seed if cfg.data.seed is not None else derived(1)
    dropout = cfg.train.dropout_seed if cfg.train.dropout_seed is not None else derived(2)
    return {"init": cfg.train.seed, "data": data, "dropout": dropout}


def train(
    cfg: TrainConfig,
    *,
    report: Report | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    allow_changes: bool = False,
    progress: bool = False,
    data: Data | None = None,
) -> TrainResult:
    """Train the model `cfg` describes and return what happened.

    checkpoint_dir: where `last.pt` (every evaluation) and `best.pt` go; with resume=True a run
    finding a usable `last.pt` there continues from it; allow_changes: it continues even when the
    checkpoint's config differs in CHANGEABLE_ON_RESUME keys (else it starts fresh). data:
    preloaded splits (else loaded).
    Raises DivergedError, OutOfMemoryError, or a UsageError subclass for bad input.
    """
    cfg.validate()
    dev = devices.resolve_device(cfg.train.device)
    try:
        return _train(cfg, dev, report, checkpoint_dir, resume, progress, data, allow_changes)
    except Exception as e:
        if devices.is_out_of_memory(e):
            devices.release_memory(dev)
            raise OutOfMemoryError(str(dev), str(e)) from None
        raise


def _train(cfg, dev, report, checkpoint_dir, resume, progress, data, allow_changes) -> TrainResult:
    t_start = time.perf_counter()
    m, o, t = cfg.model, cfg.optim, cfg.train
    devices.configure(dev, deterministic=t.deterministic)
    dtype = devices.resolve_dtype(t.dtype, dev)
    seeds = resolve_seeds(cfg)
    if data is None:
        data = load_data(cfg.data, block_size=m.block_size)
    data.to(dev)

    torch.manual_seed(seeds["init"])
    model = build_model(m, data.vocab_size).to(dev)
    n_params = count_params(model)
    optimizer = _make_optimizer(model, cfg, dev)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg))
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    sampler = BatchSampler(
        data.tokens["train"], batch_size=t.batch_size, block_size=m.block_size, seed=seeds["data"]
    )
    torch.manual_seed(seeds["dropout"])
    forward = torch.compile(model) if t.compile else model
    amp = devices.autocast(dev, dtype)
    val_starts = eval_windows(
        data.tokens["val"], block_size=m.block_size, n_windows=t.eval_batches * EVAL_BATCH_SIZE
    )

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    step, best_loss, best_step, evals_since_best, history = 0, math.inf, 0, 0, []
    if ckpt_dir is not None and resume:
        state = checkpoint.load(ckpt_dir / checkpoint.LAST)
        changed = _changed_keys(state["config"], cfg) if state is not None else set()
        if changed and not (allow_changes and changed <= CHANGEABLE_ON_RESUME):
            log.warning("checkpoint in %s is for another config; starting fresh", ckpt_dir)
            state = None
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            checkpoint.restore_rng(state["rng"], sampler.generator)
            step, best_loss, best_step = state["step"], state["best_loss"], state["best_step"]
            evals_since_best, history = state["evals_since_best"], state["history"]
            if changed:  # load_state_dict brought back the checkpoint's lr and decay
                _apply_optim_settings(optimizer, scheduler, cfg)
    resumed_from = last_eval_step = step

    # Loss bookkeeping lives on the device; the host reads it only every `sync_every` steps.
    sync_every = 1 if dev.type == "cpu" else 10
    loss_sum = torch.zeros((), device=dev)
    loss_count = 0
    first_bad_step = torch.full((), -1, dtype=torch.long, device=dev)
    train_time, tokens_per_step = 0.0, t.batch_size * m.block_size
    stop_reason, metrics = "max_steps", {}
    bar = tqdm(total=t.max_steps, initial=step, disable=not progress, desc="train", unit="step")
    t_segment = time.perf_counter()
    model.train()
    while step < t.max_steps:
        step += 1
        x, y = sampler.next()
        with amp:
            logits = forward(x)
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)),
            y.reshape(-1),
            label_smoothing=t.label_smoothing,
        )
        scaler.scale(loss).backward()
        if o.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        loss = loss.detach()
        first_bad_step = torch.where(
            (first_bad_step < 0) & ~torch.isfinite(loss), step, first_bad_step
        )
        loss_sum += loss
        loss_count += 1
        is_eval = step % t.eval_interval == 0 or step == t.max_steps
        if step % sync_every == 0 or is_eval:
            bad = int(first_bad_step)
            if bad >= 0:
                bar.close()
                raise DivergedError(bad, float("nan"))
            bar.update(step - bar.n)
            if progress:
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if not is_eval:
            continue

        segment_time = time.perf_counter() - t_segment
        train_time += segment_time
        val_loss = _evaluate(forward, data.tokens["val"], val_starts, m.block_size, amp)
        metrics = {
            "train/loss": float(loss_sum) / loss_count,
            "val/loss": val_loss,
            "val/bpb": val_loss / math.log(2) / data.bytes_per_token["val"],
            "lr": scheduler.get_last_lr()[0],
            # throughput since the previous evaluation: steady-state speed, compile time aside
            "system/tokens_per_s": (step - last_eval_step)
            * tokens_per_step
            / max(segment_time, 1e-9),
            "system/peak_mem_mb": devices.peak_memory_mb(dev),
        }
        loss_sum.zero_()
        loss_count, last_eval_step = 0, step
        history.append({"step": step, **metrics})
        improved = val_loss < best_loss
        if improved:
            best_loss, best_step, evals_since_best = val_loss, step, 0
        else:
            evals_since_best += 1
        if ckpt_dir is not None:
            _save(ckpt_dir, model, optimizer, scheduler, scaler, sampler, cfg, step, best_loss,
                  best_step, evals_since_best, history, best=improved)  # fmt: skip
        if progress:
            bar.write(
                f"step {step}: train {metrics['train/loss']:.4f}  val {val_loss:.4f}  "
                f"bpb {metrics['val/bpb']:.3f}  {metrics['system/tokens_per_s']:,.0f} tok/s"
            )
        try:
            if report is not None:
                report(step, dict(metrics))
        except StopTraining as stop:
            stop_reason = stop.reason
            break
        if t.patience and evals_since_best >= t.patience:
            stop_reason = "early_stopped"
            break
        t_segment = time.perf_counter()
    bar.close()
    return TrainResult(
        best_val_loss=best_loss,
        best_step=best_step,
        metrics=metrics,
        steps=step,
        tokens=step * tokens_per_step,
        wall_time_s=time.perf_counter() - t_start,
        tokens_per_s=(step - resumed_from) * tokens_per_step / max(train_time, 1e-9),
        n_params=n_params,
        stop_reason=stop_reason,
        history=history,
        data=data.info(),
        seeds=seeds,
        device=str(dev),
        checkpoint=str(ckpt_dir / checkpoint.BEST) if ckpt_dir is not None else None,
        resumed_from=resumed_from,
    )


@torch.no_grad()
def _evaluate(model, tokens: torch.Tensor, starts: torch.Tensor, block_size: int, amp) -> float:
    """Mean next-token loss (nats) over the windows starting at `starts`."""
    was_training = model.training
    model.eval()
    offsets = torch.arange(block_size + 1, device=tokens.device)
    total = torch.zeros((), device=tokens.device)
    for chunk in starts.to(tokens.device).split(EVAL_BATCH_SIZE):
        windows = tokens[chunk[:, None] + offsets]
        with amp:
            logits = model(windows[:, :-1])
        total += F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1), reduction="sum"
        )
    model.train(was_training)
    return float(total) / (starts.numel() * block_size)


def evaluate_split(
    model: torch.nn.Module, data: Data, split: str, cfg: TrainConfig
) -> dict[str, float]:
    """Loss and bits per byte over every non-overlapping window of `split` (e.g. "test")."""
    dev = next(model.parameters()).device
    tokens = data.tokens[split].to(dev)
    starts = eval_windows(tokens, block_size=cfg.model.block_size, n_windows=None)
    amp = devices.autocast(dev, devices.resolve_dtype(cfg.train.dtype, dev))
    loss = _evaluate(model, tokens, starts, cfg.model.block_size, amp)
    return {f"{split}/loss": loss, f"{split}/bpb": loss / math.log(2) / data.bytes_per_token[split]}


def score_checkpoint(
    cfg: TrainConfig, path: str | Path, *, split: str = "test", data: Data | None = None
) -> dict[str, float]:
    """Load the weights saved at `path` (a best.pt) and measure them on a whole split."""
    state = checkpoint.load(Path(path))
    if state is None:
        raise TrainerError(f"no usable checkpoint at {path}")
    dev = devices.resolve_device(cfg.train.device)
    if data is None:
        data = load_data(cfg.data, block_size=cfg.model.block_size)
    model = build_model(cfg.model, data.vocab_size)
    model.load_state_dict(state["model"])
    return evaluate_split(model.to(dev), data.to(dev), split, cfg)


def _make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, dev: torch.device
) -> torch.optim.Optimizer:
    """Weight decay on matrices only: decaying norms, biases and gains only hurts."""
    o = cfg.optim
    # fused Adam(W) kernels: one launch per step on CUDA, 4% more tokens/s on CPU (BENCHMARKS.md)
    fused = dev.type in ("cuda", "cpu") or None
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=fused)
    if o.name == "adam":  # weight decay here is L2 in the gradient, as Adam defines it
        return torch.optim.Adam(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=fused)
    if o.nesterov and o.momentum == 0:
        raise ConfigError("optim.nesterov needs optim.momentum > 0, but got momentum=0")
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)


def _changed_keys(saved: dict[str, dict[str, Any]], cfg: TrainConfig) -> set[str]:
    """Dotted keys whose value in a checkpoint's config differs from `cfg`."""
    old = {f"{g}.{k}": v for g, values in saved.items() for k, v in values.items()}
    now = cfg.flat()
    return {k for k in old.keys() | now.keys() if old.get(k) != now.get(k)}


def _apply_optim_settings(optimizer: torch.optim.Optimizer, scheduler, cfg: TrainConfig) -> None:
    """Put cfg's optimizer settings into restored param groups (matrices first, see
    _make_optimizer), at the restored point of the schedule."""
    o = cfg.optim
    scheduler.base_lrs = [o.lr] * len(optimizer.param_groups)
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group, decay in zip(optimizer.param_groups, (o.weight_decay, 0.0), strict=True):
        group["initial_lr"], group["lr"], group["weight_decay"] = o.lr, o.lr * factor, decay
        if "betas" in group:
            group["betas"], group["eps"] = (o.beta1, o.beta2), o.eps
        if "momentum" in group:
            group["momentum"] = o.momentum
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of optim.lr after `step` steps: linear warmup, then decay to the floor."""
    s, max_steps = cfg.schedule, cfg.train.max_steps
    warmup = round(s.warmup_frac * max_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if s.name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if s.name == "cosine" else 1 - progress
        return s.min_lr_frac + (1 - s.min_lr_frac) * decay

    return factor


def _save(ckpt_dir, model, optimizer, scheduler, scaler, sampler, cfg, step, best_loss, best_step,
          evals_since_best, history, *, best: bool) -> None:  # fmt: skip
    weights = model.state_dict()
    checkpoint.save(
        ckpt_dir / checkpoint.LAST,
        {
            "model": weights,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": checkpoint.rng_state(sampler.generator),
            "config": cfg.to_dict(),
            "step": step,
            "best_loss": best_loss,
            "best_step": best_step,
            "evals_since_best": evals_since_best,
            "history": history,
        },
    )
    if best:
        checkpoint.save(
            ckpt_dir / checkpoint.BEST, {"model": weights, "config": cfg.to_dict(), "step": step}
        )
