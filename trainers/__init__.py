"""A small, fast, reproducible PyTorch trainer for causal language models.

It takes a TrainConfig and an optional `report(step, metrics)` callback and returns a
TrainResult. It never imports optuna, ray or wandb: tuners drive it from outside.
"""

from trainers.config import TrainConfig, parse_sets
from trainers.errors import (
    ConfigError,
    CorpusError,
    DiskFullError,
    DivergedError,
    OutOfMemoryError,
    TrainerError,
    UsageError,
)
from trainers.evaluate import evaluate_split, score_checkpoint
from trainers.loop import StopTraining, TrainResult, resolve_seeds, train
from trainers.preflight import preflight

__all__ = [
    "ConfigError",
    "CorpusError",
    "DiskFullError",
    "DivergedError",
    "OutOfMemoryError",
    "StopTraining",
    "TrainConfig",
    "TrainResult",
    "TrainerError",
    "UsageError",
    "evaluate_split",
    "parse_sets",
    "preflight",
    "resolve_seeds",
    "score_checkpoint",
    "train",
]
