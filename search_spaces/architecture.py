"""Architecture: depth, heads, and width as heads x head size, so width always divides evenly."""

from __future__ import annotations

import math
from typing import Any

import optuna

from search_spaces.bounds import Bound

N_LAYER = Bound("architecture", "n_layer", "model.n_layer", low=1, kind="int")
N_HEAD = Bound("architecture", "n_head", "model.n_head", low=1, kind="int")
HEAD_SIZE = Bound("architecture", "head_size", "model.head_size_log2", low=1, kind="power_of_two")
BOUNDS = (N_LAYER, N_HEAD, HEAD_SIZE)


def suggest(
    trial: optuna.Trial,
    *,
    n_layer: tuple[int, int] = (2, 6),
    n_head: tuple[int, int] = (2, 8),
    head_size: tuple[int, int] = (16, 64),
) -> dict[str, Any]:
    n_layer = N_LAYER.check(n_layer)
    n_head = N_HEAD.check(n_head)
    head_size = HEAD_SIZE.check(head_size)
    layers = trial.suggest_int(N_LAYER.param, *n_layer)
    heads = trial.suggest_int(N_HEAD.param, *n_head)
    log2 = trial.suggest_int(
        HEAD_SIZE.param, int(math.log2(head_size[0])), int(math.log2(head_size[1]))
    )
    return {"model.n_layer": layers, "model.n_head": heads, "model.n_embd": heads * 2**log2}
