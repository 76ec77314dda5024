"""Check a config against this machine before anything runs: the device is there, the corpus
loads, and every split the run reads holds at least one context window.

A tuner calls this before it creates a study, so that a usage error is one line and nothing is
stored; inside a trial the same problems would only surface as failed trials.
"""

from __future__ import annotations

from trainers.config import TrainConfig
from trainers.data import TRAINING_SPLITS, Data, load_data
from trainers.device import resolve_device


def preflight(
    cfg: TrainConfig, *, needed: tuple[str, ...] = TRAINING_SPLITS, device: bool = True
) -> Data:
    """The tokenized data (cached for the runs that follow), or a UsageError saying what is
    wrong. device=False skips the device check (a Ray driver has no GPU of its own)."""
    cfg.validate()
    if device:
        resolve_device(cfg.train.device)
    return load_data(cfg.data, block_size=cfg.model.block_size, needed=needed)
