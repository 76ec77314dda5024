"""Tiny trainables for the tests that check the service rather than training: a few lines each,
no torch, a trial in milliseconds. They keep the seam's contract as any user code must."""

from __future__ import annotations

import math
import os
import random
import signal
from typing import Any

# x near OPTIMUM is best; every report improves on the last, so a trial needs its whole budget
OPTIMUM = 0.3


def curve(x: float, step: int) -> float:
    """A loss that falls with the steps towards (x - OPTIMUM)^2."""
    return (x - OPTIMUM) ** 2 + 1 / step


def quadratic(config: dict[str, Any], run: Any) -> None:
    """Reports val/loss and val/accuracy (1 - loss) every train.eval_interval steps, with
    seed noise (sd `noise_sd`, default 0.001: a draw per seed and config, as training's luck
    depends on both); saves its step and resumes from it. Scores the test split."""
    luck = random.Random(f"{run.seed('noise')}:{config['x']}")
    noise = luck.gauss(0, config.get("noise_sd", 0.001))
    state = {"step": 0}
    run.restore(state=state)
    while state["step"] < config["train.max_steps"]:
        state["step"] += config["train.eval_interval"]
        loss = curve(config["x"], state["step"]) + noise
        run.report(state["step"], {"val/loss": loss, "val/accuracy": 1 - loss})
        run.save(state["step"], state=state)
        if config.get("die_at") == state["step"] and not os.environ.get("HPO_FAKE_SURVIVES"):
            os.kill(os.getpid(), signal.SIGKILL)  # a worker killed right after a save
    if run.scores_test:
        loss = curve(config["x"], state["step"]) + noise + 0.01
        run.report_test({"test/loss": loss, "test/accuracy": 1 - loss})


def suggest(trial: Any, *, x: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    return {"x": trial.suggest_float("x", *x)}


def suggest_with_a_typo(trial: Any) -> dict[str, Any]:
    """Tunes "x" and "y"; quadratic never reads "y"."""
    return {"x": trial.suggest_float("x", 0, 1), "y": trial.suggest_float("y", 0, 1)}


def blows_up_above(config: dict[str, Any], run: Any) -> None:
    """Healthy at step 10; from step 20 on, an x above 0.5 gives a NaN loss."""
    run.report(10, {"val/loss": 1.0})
    run.report(20, {"val/loss": math.nan if config["x"] > 0.5 else 0.5})


def nan_at_first_report(config: dict[str, Any], run: Any) -> None:
    run.report(1, {"val/loss": math.nan})


def reports_the_wrong_metric(config: dict[str, Any], run: Any) -> None:
    run.report(1, {"val/acc": 0.5})


def swallows_what_report_raises(config: dict[str, Any], run: Any) -> None:
    try:
        run.report(1, {"val/acc": 0.5})
    except Exception:
        raise RuntimeError("the user's own error, hiding the real one") from None


def steps_go_back(config: dict[str, Any], run: Any) -> None:
    run.report(2, {"val/loss": 1.0})
    run.report(1, {"val/loss": 0.5})


def raises(config: dict[str, Any], run: Any) -> None:
    run.report(1, {"val/loss": 1.0})
    raise ZeroDivisionError("division by zero in the user's code")


def takes_one_argument(config: dict[str, Any]) -> None:
    """Not a training function: hpo calls train(config, run)."""


NOT_A_FUNCTION = 42
