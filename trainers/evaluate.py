"""Measuring a model: mean next-token loss over fixed windows of a split, and bits per byte.

The loop measures the validation split on `train.eval_batches` fixed windows at every
evaluation; `evaluate_split` and `score_checkpoint` measure a whole split (hpo.validate: test).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from pathlib import Path

import torch
import torch.nn.functional as F

from trainers import checkpoint
from trainers import device as devices
from trainers.config import TrainConfig
from trainers.data import EVAL_BATCH_SIZE, Data, eval_windows, load_data
from trainers.errors import TrainerError
from trainers.model import build_model


@torch.no_grad()
def mean_loss(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    starts: torch.Tensor,
    *,
    block_size: int,
    amp: AbstractContextManager,
) -> float:
    """Mean next-token loss (nats) over the windows of `tokens` (1-D ids) at `starts`."""
    was_training = model.training
    model.eval()
    offsets = torch.arange(block_size + 1, device=tokens.device)
    total = torch.zeros((), device=tokens.device)
    for chunk in starts.to(tokens.device).split(EVAL_BATCH_SIZE):
        # (chunk, block_size + 1): inputs are all but the last token, targets all but the first
        windows = tokens[chunk[:, None] + offsets]
        with amp:
            logits = model(windows[:, :-1])
        total += F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1), reduction="sum"
        )
    model.train(was_training)
    return float(total) / (starts.numel() * block_size)


def bits_per_byte(loss: float, *, data: Data, split: str) -> float:
    """Nats per token -> bits per UTF-8 byte: comparable across tokenizers."""
    return loss / math.log(2) / data.bytes_per_token[split]


def evaluate_split(
    model: torch.nn.Module, data: Data, split: str, cfg: TrainConfig
) -> dict[str, float]:
    """Loss and bits per byte over every non-overlapping window of `split` (e.g. "test")."""
    dev = next(model.parameters()).device
    tokens = data.tokens[split].to(dev)
    starts = eval_windows(tokens, block_size=cfg.model.block_size, n_windows=None)
    amp = devices.autocast(dev, devices.resolve_dtype(cfg.train.dtype, dev))
    loss = mean_loss(model, tokens, starts, block_size=cfg.model.block_size, amp=amp)
    return {f"{split}/loss": loss, f"{split}/bpb": bits_per_byte(loss, data=data, split=split)}


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
