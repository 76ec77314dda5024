"""A small, fast, reproducible PyTorch trainer for causal language models.

It takes a TrainConfig and an optional `report(step, metrics)` callback and returns a
TrainResult. It never imports optuna, ray or wandb: tuners drive it from outside.
"""

from trainers.config import TrainConfig, parse_sets
from trainers.errors import (
    ConfigError,
    CorpusError,
    DivergedError,
    OutOfMemoryError,
    TrainerError,
    UsageError,
)
from trainers.loop import (
    StopTraining,
    TrainResult,
    evaluate_split,
    resolve_seeds,
    score_checkpoint,
    train,
)

__all__ = [
    "ConfigError",
    "CorpusError",
    "DivergedError",
    "OutOfMemoryError",
    "StopTraining",
    "TrainConfig",
    "TrainResult",
    "TrainerError",
    "UsageError",
    "evaluate_split",
    "parse_sets",
    "resolve_seeds",
    "score_checkpoint",
    "train",
]
