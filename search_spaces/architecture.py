"""Architecture: depth, heads, and width as heads x head size, so width always divides evenly."""

from __future__ import annotations

import math
from typing import Any

import optuna

from search_spaces.bounds import check_power_of_two_range, check_range


def suggest(
    trial: optuna.Trial,
    *,
    n_layer: tuple[int, int] = (2, 6),
    n_head: tuple[int, int] = (2, 8),
    head_size: tuple[int, int] = (16, 64),
) -> dict[str, Any]:
    n_layer = check_range("architecture.n_layer", n_layer, integer=True, log=True)
    n_head = check_range("architecture.n_head", n_head, integer=True, log=True)
    head_size = check_power_of_two_range("architecture.head_size", head_size)
    layers = trial.suggest_int("model.n_layer", *n_layer)
    heads = trial.suggest_int("model.n_head", *n_head)
    log2 = trial.suggest_int(
        "model.head_size_log2", int(math.log2(head_size[0])), int(math.log2(head_size[1]))
    )
    return {"model.n_layer": layers, "model.n_head": heads, "model.n_embd": heads * 2**log2}
