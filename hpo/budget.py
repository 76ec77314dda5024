"""Equal compute per trial when the search space tunes the batch size or the context length.

Hyperband's resource is training steps, and a step of a larger batch or a longer context sees
more tokens: at the same step such a trial has had more compute, rungs compare unequal budgets,
and the search drifts to the largest batch. So a trial whose tokens per step differ from the
study's fixed config (its `trainer:` settings and --set) gets its step budget and evaluation
interval rescaled to train on as many tokens, evaluated at the same token counts, and reports
each evaluation at the step at which the fixed config would have seen as many tokens. The
pruner (and Ray's schedulers) then compare equal compute; a trial of the fixed shape is
unchanged.
"""

from __future__ import annotations

import math

from trainers import TrainConfig


def tokens_per_step(cfg: TrainConfig) -> int:
    return cfg.train.batch_size * cfg.model.block_size


def equal_compute(cfg: TrainConfig, base: TrainConfig) -> TrainConfig:
    """`cfg` with max_steps and eval_interval giving it `base`'s tokens, evaluated at (just
    past) `base`'s token counts: rounded up, so every evaluation reaches its rung."""
    ratio = tokens_per_step(base) / tokens_per_step(cfg)
    if ratio == 1:
        return cfg
    return cfg.with_overrides(
        {
            "train.max_steps": math.ceil(base.train.max_steps * ratio),
            "train.eval_interval": math.ceil(base.train.eval_interval * ratio),
        }
    )


def resource(step: int, cfg: TrainConfig, base: TrainConfig) -> int:
    """What a trial reports step `step` as: the step of `base` with as many tokens seen."""
    ratio = tokens_per_step(cfg) / tokens_per_step(base)
    return step if ratio == 1 else round(step * ratio)
