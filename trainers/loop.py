"""The training loop: `train(cfg, report=...) -> TrainResult`. Knows nothing of tuning.

Every `train.eval_interval` steps the model is measured on fixed validation windows and
`report(step, metrics)` is called; a callback stops the run early by raising `StopTraining`
(the result then says why) or any other exception (which propagates). On CUDA the step loop
never waits for the GPU except at log and eval points.

How it reads: `train` sets up (`_setup`), continues from last.pt when there is one
(`TrainState.resume`, trainers/state.py), then `_loop` runs `_train_step` to train.max_steps,
and at each evaluation `_measure`s the model, records the result in the TrainState, saves a
checkpoint and reports.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
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
from trainers.errors import DivergedError
from trainers.evaluate import bits_per_byte, evaluate_split, mean_loss, score_checkpoint
from trainers.model import build_model, count_params
from trainers.optim import make_optimizer, make_scheduler
from trainers.state import CHANGEABLE_ON_RESUME, TrainState

__all__ = [
    "CHANGEABLE_ON_RESUME",
    "DIVERGENCE_FACTOR",
    "StopTraining",
    "TrainResult",
    "evaluate_split",
    "resolve_seeds",
    "score_checkpoint",
    "train",
]

# A loss above this multiple of a uniform guess's (log of the vocabulary size) means the run has
# blown up: a model that has learned nothing scores 1x, and no healthy run gets anywhere near 2x.
# The training loss is judged smoothed (an EMA over ~10 steps), so that a one-batch spike that a
# healthy run recovers from is not taken for divergence; the validation loss as it is.
DIVERGENCE_FACTOR = 2.0
DIVERGENCE_SMOOTHING = 0.1

Report = Callable[[int, dict[str, float]], None]


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
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    t_start = time.perf_counter()
    with devices.out_of_memory_as_error(dev):
        setup, state = _setup(cfg, dev=dev, data=data)
        if ckpt_dir is not None and resume:
            state.resume(ckpt_dir, cfg=cfg, allow_changes=allow_changes)
        stop_reason = _loop(
            state, setup=setup, cfg=cfg, report=report, ckpt_dir=ckpt_dir, progress=progress
        )
    return TrainResult(
        best_val_loss=state.best_loss,
        best_step=state.best_step,
        metrics=state.metrics,
        steps=state.step,
        tokens=state.step * setup.tokens_per_step,
        wall_time_s=time.perf_counter() - t_start,
        # this session's steps: those before a resume took their time in another process
        tokens_per_s=_per_second(
            (state.step - state.resumed_from) * setup.tokens_per_step, state.train_time
        ),
        n_params=count_params(state.model),
        stop_reason=stop_reason,
        history=state.history,
        data=setup.data.info(),
        seeds=setup.seeds,
        device=str(dev),
        checkpoint=str(ckpt_dir / checkpoint.BEST) if ckpt_dir is not None else None,
        resumed_from=state.resumed_from,
    )


@dataclass(frozen=True)
class _Setup:
    """What a run trains and measures with: fixed once set up (TrainState is what changes)."""

    data: Data  # on the device
    dev: torch.device
    seeds: dict[str, int]  # resolve_seeds
    amp: AbstractContextManager  # autocast to train.dtype (a no-op in float32)
    # the model, torch.compile'd when train.compile: ids (B, T) -> logits (B, T, vocab)
    forward: Callable[[torch.Tensor], torch.Tensor]
    val_starts: torch.Tensor  # (eval_batches * EVAL_BATCH_SIZE,) first tokens of val windows
    loss_limit: float  # DIVERGENCE_FACTOR x a uniform guess's loss
    tokens_per_step: int  # train.batch_size x model.block_size


def _setup(cfg: TrainConfig, *, dev: torch.device, data: Data | None) -> tuple[_Setup, TrainState]:
    """Data, model, optimizer and schedule for a fresh run; each random stream seeded apart."""
    m, t = cfg.model, cfg.train
    devices.configure(dev, deterministic=t.deterministic)
    dtype = devices.resolve_dtype(t.dtype, dev)
    seeds = resolve_seeds(cfg)
    if data is None:
        data = load_data(cfg.data, block_size=m.block_size)
    data.to(dev)

    torch.manual_seed(seeds["init"])
    model = build_model(m, data.vocab_size).to(dev)
    optimizer = make_optimizer(model, cfg=cfg, dev=dev)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg=cfg),
        scaler=torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16),
        sampler=BatchSampler(
            data.tokens["train"],
            batch_size=t.batch_size,
            block_size=m.block_size,
            seed=seeds["data"],
        ),
    )
    # dropout draws from the global generator, from here on
    torch.manual_seed(seeds["dropout"])
    setup = _Setup(
        data=data,
        dev=dev,
        seeds=seeds,
        amp=devices.autocast(dev, dtype),
        forward=torch.compile(model) if t.compile else model,
        val_starts=eval_windows(
            data.tokens["val"], block_size=m.block_size, n_windows=t.eval_batches * EVAL_BATCH_SIZE
        ),
        loss_limit=DIVERGENCE_FACTOR * math.log(data.vocab_size),
        tokens_per_step=t.batch_size * m.block_size,
    )
    return setup, state


def _loop(
    state: TrainState,
    *,
    setup: _Setup,
    cfg: TrainConfig,
    report: Report | None,
    ckpt_dir: Path | None,
    progress: bool,
) -> str:
    """Train from state.step to train.max_steps, evaluating every train.eval_interval steps and
    at the last; returns why it stopped."""
    t = cfg.train
    # the host reads the loss only every `sync_every` steps: on a GPU that read waits for every
    # queued kernel; on a CPU nothing is queued, so divergence is caught at once
    sync_every = 1 if setup.dev.type == "cpu" else 10
    meter = _LossMeter(setup.dev, limit=setup.loss_limit)
    bar = tqdm(
        total=t.max_steps, initial=state.step, disable=not progress, desc="train", unit="step"
    )
    t_segment = time.perf_counter()
    state.model.train()
    try:
        while state.step < t.max_steps:
            step_lr = _train_step(state, setup=setup, cfg=cfg, meter=meter)
            is_eval = state.step % t.eval_interval == 0 or state.step == t.max_steps
            if state.step % sync_every == 0 or is_eval:
                meter.check()
                bar.update(state.step - bar.n)
                if progress:
                    bar.set_postfix(loss=f"{meter.last.item():.4f}", refresh=False)
            if not is_eval:
                continue

            seconds = time.perf_counter() - t_segment
            state.train_time += seconds
            metrics = _measure(
                setup, cfg=cfg, meter=meter, step=state.step, lr=step_lr, seconds=seconds
            )
            improved = state.record(metrics)
            if ckpt_dir is not None:
                state.save(ckpt_dir, cfg=cfg, best=improved)
            if progress:
                bar.write(_progress_line(state.step, metrics))
            stop_reason = _report(report, step=state.step, metrics=metrics)
            if stop_reason is not None:
                return stop_reason
            if t.patience and state.evals_since_best >= t.patience:
                return "early_stopped"
            t_segment = time.perf_counter()
    finally:
        bar.close()
    return "max_steps"


def _train_step(state: TrainState, *, setup: _Setup, cfg: TrainConfig, meter: _LossMeter) -> float:
    """One optimizer step on the next batch; returns the learning rate that step used."""
    state.step += 1
    x, y = state.sampler.next()  # (B, T) each; y is x shifted by one token
    with setup.amp:
        logits = setup.forward(x)  # (B, T, vocab)
    loss = F.cross_entropy(
        logits.float().view(-1, logits.size(-1)),
        y.reshape(-1),
        label_smoothing=cfg.train.label_smoothing,
    )
    state.scaler.scale(loss).backward()
    if cfg.optim.grad_clip > 0:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.optim.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    # the rate this step used, before the schedule moves on to the next one's
    lr = state.scheduler.get_last_lr()[0]
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    meter.add(loss.detach(), step=state.step)
    return lr


class _LossMeter:
    """The training loss, kept on the device so that a step never waits for the GPU: its mean
    since the previous evaluation, and the first step at which it blew up."""

    def __init__(self, dev: torch.device, *, limit: float) -> None:
        self.limit = limit
        self.sum = torch.zeros((), device=dev)
        self.count = 0  # steps since the previous evaluation
        self.last: torch.Tensor | None = None  # the latest step's loss, 0-d
        self.smooth: torch.Tensor | None = None  # its EMA, 0-d: what divergence is judged on
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=dev)  # -1: none yet
        self.first_bad_loss = torch.zeros((), device=dev)

    def add(self, loss: torch.Tensor, *, step: int) -> None:
        """Count one step's loss (0-d, detached), without a host sync."""
        self.last = loss
        self.smooth = loss if self.smooth is None else self.smooth.lerp(loss, DIVERGENCE_SMOOTHING)
        # the first step whose loss is not finite or has blown up
        new_bad = (self.first_bad_step < 0) & (~torch.isfinite(loss) | (self.smooth > self.limit))
        self.first_bad_step = torch.where(new_bad, step, self.first_bad_step)
        self.first_bad_loss = torch.where(new_bad, self.smooth, self.first_bad_loss)
        self.sum += loss
        self.count += 1

    def check(self) -> None:
        """Raise DivergedError at the first bad step seen. Reads the device: a host sync."""
        bad = int(self.first_bad_step)
        if bad >= 0:
            raise DivergedError(bad, float(self.first_bad_loss), self.limit)

    def mean(self) -> float:
        """The mean loss since the previous call (a host sync); counting starts anew."""
        mean = float(self.sum) / self.count
        self.sum.zero_()
        self.count = 0
        return mean


def _measure(
    setup: _Setup,
    *,
    cfg: TrainConfig,
    meter: _LossMeter,
    step: int,
    lr: float,
    seconds: float,
) -> dict[str, float]:
    """The evaluation after `step`: the model on the fixed validation windows, and the training
    loss and speed over the steps `meter` counted, in `seconds`, since the previous evaluation."""
    val_loss = mean_loss(
        setup.forward,
        setup.data.tokens["val"],
        setup.val_starts,
        block_size=cfg.model.block_size,
        amp=setup.amp,
    )
    if not val_loss <= setup.loss_limit:  # NaN included
        raise DivergedError(step, val_loss, setup.loss_limit)
    tokens = meter.count * setup.tokens_per_step
    return {
        "train/loss": meter.mean(),
        "val/loss": val_loss,
        "val/bpb": bits_per_byte(val_loss, data=setup.data, split="val"),
        "lr": lr,
        # throughput since the previous evaluation: steady-state speed, compile time aside
        "system/tokens_per_s": _per_second(tokens, seconds),
        "system/peak_mem_mb": devices.peak_memory_mb(setup.dev),
    }


def _report(report: Report | None, *, step: int, metrics: dict[str, float]) -> str | None:
    """Hand an evaluation to the caller; the reason it gave when it raised StopTraining."""
    if report is None:
        return None
    try:
        report(step, dict(metrics))
    except StopTraining as stop:
        return stop.reason
    return None


def _progress_line(step: int, metrics: dict[str, float]) -> str:
    return (
        f"step {step}: train {metrics['train/loss']:.4f}  val {metrics['val/loss']:.4f}  "
        f"bpb {metrics['val/bpb']:.3f}  {metrics['system/tokens_per_s']:,.0f} tok/s"
    )


def _per_second(tokens: int, seconds: float) -> float:
    return tokens / max(seconds, 1e-9)
