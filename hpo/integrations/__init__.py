"""Adapters that put the frameworks people already train with on hpo's seam (hpo.seam.Run):

- `hpo.integrations.huggingface`: a `transformers.Trainer` (arguments from the config, a
  callback that reports and prunes, the Trainer's own checkpoints for resume).
- `hpo.integrations.lightning`: a `LightningModule` (seeding, a callback that reports and
  stops through `trainer.should_stop`, Lightning's own checkpoints for resume).
- `hpo.integrations.script`: any command line in any language (placeholders for the sampled
  values, reports printed as lines, SIGTERM to prune).

Each is imported only by the code that uses it: the frameworks are optional extras.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# a framework's split prefixes -> hpo's split names ({split}/{metric})
SPLITS = {
    "train": "train",
    "eval": "val",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
# what a framework logs beside the model's metrics: speeds and counters, not results
NOT_METRICS = {"runtime", "samples_per_second", "steps_per_second", "epoch", "step"}


def metric_name(key: str, default_split: str) -> str | None:
    """hpo's name for a framework's metric: "eval_f1" -> "val/f1", "val_loss" -> "val/loss",
    "val/acc" stays; a name without a split prefix gets `default_split`. None for what is not a
    model metric (eval_runtime, epoch)."""
    if "/" in key:
        return key
    head, sep, rest = key.partition("_")
    split, name = (SPLITS[head], rest) if sep and head in SPLITS else (default_split, key)
    return None if name in NOT_METRICS else f"{split}/{name}"


def metric_names(metrics: Mapping[str, Any], default_split: str) -> dict[str, float]:
    """A framework's metrics under hpo's names, the numbers only (see metric_name)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = metric_name(str(key), default_split)
        if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
            value = value.item()
        if name is not None and isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def framework_name(metric: str) -> str:
    """The name a framework logs hpo's `metric` under, without its split: "val/f1" -> "f1"."""
    return metric.partition("/")[2] or metric


def steps(config: Mapping[str, Any], key: str, where: str) -> int:
    """A step count the adapter needs from the config (train.max_steps, train.eval_interval),
    or the ContractError that says where to set it."""
    from hpo.seam import ContractError

    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ContractError(
            f"{where}: the config needs {key} as a whole number >= 1, but got {value!r}; set it "
            "in the study's trainer settings"
        )
    return value
