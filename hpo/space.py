"""A study's search space: hpo's building blocks (search_spaces/) and the study's own suggest
functions, composed in the order the study lists them.

    search_space:
      optimizer: {lr: [1.0e-4, 3.0e-2]}        # one of search_spaces.SPACES, with bounds
      examples.digits:suggest: {channels: [8, 64]}   # the user's suggest(trial, **bounds)

A suggest function of the user's takes an Optuna trial (and the study's bounds as keyword
arguments) and returns config overrides, {"model.channels": 32}; like hpo's own, it names each
parameter after the config key it sets, or gives a conditional parameter a name of its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import optuna

import search_spaces
from hpo.errors import UsageError
from hpo.trainable import load_entry

SpaceFn = Callable[..., dict[str, Any]]


def is_own(name: str) -> bool:
    """A study's own suggest function ("module:function"), not one of search_spaces'."""
    return ":" in name


def space_function(name: str) -> SpaceFn:
    """The suggest function a search_space key names, or UsageError."""
    if is_own(name):
        fn = load_entry(name, what="search_space")
        if not callable(fn):
            raise UsageError(f"search_space {name!r} is not a function suggest(trial, **bounds)")
        return fn
    if name not in search_spaces.SPACES:
        raise UsageError(
            f"unknown search space {name!r}; valid: {', '.join(search_spaces.SPACES)}, "
            "or a suggest function of your own as 'module:function'"
        )
    return search_spaces.SPACES[name]


def bound_names(name: str) -> list[str] | None:
    """The bounds a space takes (its keyword arguments); None: any (it takes **kwargs)."""
    params = inspect.signature(space_function(name)).parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [p for p in list(params)[1:]]  # the first is the trial


def suggest(trial: optuna.Trial, spaces: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Compose the named spaces: {space name: bounds} -> one dict of config overrides."""
    overrides: dict[str, Any] = {}
    for name, bounds in spaces.items():
        sampled = space_function(name)(trial, **(bounds or {}))
        if not isinstance(sampled, dict):
            raise ValueError(
                f"search space {name!r} must return a dict of config overrides, but returned "
                f"{type(sampled).__name__}"
            )
        overrides.update(sampled)
    return overrides


def params_for(spaces: dict[str, dict[str, Any] | None], values: dict[str, Any]) -> dict[str, Any]:
    """The parameters that make the spaces set each key they set to its value in `values`
    (the study's baseline as a trial); ValueError when they cannot."""
    return search_spaces.params_for(spaces, values, compose=suggest)
