"""Peer libraries as extra strategies for search_efficiency.py, each as its documentation
writes it, over the hand-written space and with training steps as the fidelity:

  - run_smac: SMAC3's MultiFidelityFacade (random forest + Hyperband), its number of trials
    set from the total budget as its "Specify Number of Trials via a Total Budget in Hyperband"
    example does; each evaluation at budget b trains from scratch for b steps (its MLP example
    trains max_iter=ceil(budget) epochs)
  - run_syne_tune: Syne Tune's BOHB (ASHA with a KDE searcher), resource attribute "steps",
    max_t = train.max_steps, driven in this process one trial at a time through the scheduler
    calls its Tuner makes (its AskTellScheduler only tells final results, so it cannot stop a
    trial)

Both are optional (pip install smac==2.4.1 syne-tune==0.16.0) and imported inside the functions.
Each returns what run_ray_tune returns: one curve entry per evaluation in the order it ran, steps
summed over evaluations, the best counting only evaluations trained to train.max_steps; the
study stops once the evaluations before the running one trained `budget` steps.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainers import DivergedError, StopTraining, TrainConfig, train


@dataclass
class Evaluation:
    """One training run a peer library asked for."""

    steps: int  # steps it trained
    value: float  # its best val loss (or the loss it diverged at)
    complete: bool  # trained to base.train.max_steps
    values: dict[str, Any]  # the hand-written space's values


@contextmanager
def _numpy_seeded(seed: int) -> Iterator[None]:
    """numpy's global generator seeded for the study, restored after. Syne Tune's KDE draws its
    random configs (a third of them) from it whatever random_seed says, and SMAC's runs of one
    seed differed between processes without it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _result(evaluations: list[Evaluation], base: TrainConfig, wall: float) -> dict:
    """run_ray_tune's dict; config is None when no evaluation was trained to the end."""
    from search_efficiency import hand_overrides  # lazily: search_efficiency imports this file

    curve, best, steps, chosen = [], float("inf"), 0, None
    for e in evaluations:
        steps += e.steps
        if e.complete and e.value < best:  # a NaN is never below
            best, chosen = e.value, e.values
        curve.append((steps, best))
    return {
        "curve": curve,
        "best": best,
        "wall_s": wall,
        "train_s": 0.0,  # not kept, as for Ray: no overhead column
        "trials": len(evaluations),
        "config": None if chosen is None else base.with_overrides(hand_overrides(chosen)).to_dict(),
    }


def run_smac(base: TrainConfig, seed: int, budget: int, workdir: Path) -> dict:
    """SMAC3's multi-fidelity facade at its defaults, budgets from one evaluation interval to
    train.max_steps, stopped at `budget` steps (or at the n_trials its helper derives from
    that budget, whichever comes first)."""
    from ConfigSpace import Categorical, Configuration, ConfigurationSpace, Float
    from search_efficiency import HAND_FLOATS, OPTIMIZERS, SCHEDULES, hand_overrides
    from smac import MultiFidelityFacade, Scenario
    from smac.callback import Callback
    from smac.intensifier.hyperband_utils import get_n_trials_for_hyperband_multifidelity

    space = ConfigurationSpace()
    space.add(
        [
            Categorical("optimizer", OPTIMIZERS),
            *(Float(name, (low, high), log=log) for name, (low, high, log) in HAND_FLOATS.items()),
            Categorical("schedule", SCHEDULES),
        ]
    )
    min_steps, max_steps = base.train.eval_interval, base.train.max_steps
    evaluations: list[Evaluation] = []

    def target(config: Configuration, seed: int = 0, budget: float = max_steps) -> float:
        # a run of `budget` steps from scratch, its schedule spanning those steps, as the
        # example's MLPClassifier(max_iter=ceil(budget)); round() drops float noise (100.0000001)
        steps = math.ceil(round(budget, 6))
        values = dict(config)
        cfg = base.with_overrides({**hand_overrides(values), "train.max_steps": steps})
        try:
            result = train(cfg)
        except DivergedError as e:
            evaluations.append(Evaluation(e.step, e.loss, False, values))
            if math.isfinite(e.loss):  # a loss that blew up but stayed finite, as PlainObjective
                return e.loss
            raise  # SMAC records the trial CRASHED at its crash_cost (inf)
        evaluations.append(
            Evaluation(result.steps, result.best_val_loss, steps >= max_steps, values)
        )
        return result.best_val_loss

    class StopAtBudget(Callback):
        """Returning False from on_tell_end is SMAC's documented way to stop optimize()."""

        def on_tell_end(self, smbo: Any, info: Any, value: Any) -> bool | None:
            return False if sum(e.steps for e in evaluations) >= budget else None

    scenario = Scenario(
        space,
        name=f"smac-{seed}",
        output_directory=workdir / "smac",  # not ./smac3_output in the repo
        deterministic=True,  # the trainer's seed is fixed: one run per config and budget
        # the example's way to give Hyperband a total budget in fidelity units (steps)
        n_trials=get_n_trials_for_hyperband_multifidelity(
            total_budget=budget, min_budget=min_steps, max_budget=max_steps, print_summary=False
        ),
        min_budget=min_steps,
        max_budget=max_steps,
        seed=seed,
    )
    start = time.perf_counter()
    with _numpy_seeded(seed):
        smac = MultiFidelityFacade(
            scenario,
            target,
            intensifier=MultiFidelityFacade.get_intensifier(scenario),
            callbacks=[StopAtBudget()],
            overwrite=True,
            # leave the process's logging alone: any other value dictConfigs the root logger
            # with a handler on stdout, where the benchmark prints its JSON summary
            logging_level=False,
        )
        smac.optimize()
    return _result(evaluations, base, time.perf_counter() - start)


def run_syne_tune(base: TrainConfig, seed: int, budget: int, workdir: Path) -> dict:
    """Syne Tune's BOHB at its defaults, one trial at a time in this process (workdir unused:
    no backend, nothing written). Its grace period is one evaluation interval: its default, 1,
    is one report in the units its examples use (epochs); in steps it gives the same rungs as
    Ray's ASHA row (1, 3, 9 evaluations = 25, 75, 225 steps at the benchmark's settings)."""
    from search_efficiency import HAND_FLOATS, OPTIMIZERS, SCHEDULES
    from syne_tune.backend.trial_status import Trial
    from syne_tune.config_space import choice, loguniform, uniform
    from syne_tune.optimizer.baselines import BOHB

    space = {
        "optimizer": choice(OPTIMIZERS),
        **{
            name: (loguniform if log else uniform)(low, high)
            for name, (low, high, log) in HAND_FLOATS.items()
        },
        "schedule": choice(SCHEDULES),
    }
    scheduler = BOHB(
        space,
        metric="val_loss",
        do_minimize=True,
        time_attr="steps",
        max_t=base.train.max_steps,
        grace_period=base.train.eval_interval,
        random_seed=seed,
    )
    evaluations: list[Evaluation] = []
    start = time.perf_counter()
    with _numpy_seeded(seed):
        while sum(e.steps for e in evaluations) < budget:
            suggestion = scheduler.suggest()
            if suggestion is None:  # the searcher ran out of configs (not with this space)
                break
            trial = Trial(len(evaluations), suggestion.config, datetime.datetime.now())
            scheduler.on_trial_add(trial)
            evaluations.append(_syne_tune_trial(scheduler, trial, base))
    return _result(evaluations, base, time.perf_counter() - start)


def _syne_tune_trial(scheduler: Any, trial: Any, base: TrainConfig) -> Evaluation:
    """One trial, told to the scheduler as syne_tune.Tuner tells it: each result to
    on_trial_result; on STOP (or PAUSE: ASHA never pauses, and a paused trial is not resumed
    here) on_trial_remove and the trial ends; a trial that ends by itself on_trial_complete
    with its last result; one that fails (NaN loss) on_trial_error."""
    from search_efficiency import hand_overrides
    from syne_tune.optimizer.scheduler import SchedulerDecision

    max_steps = base.train.max_steps
    cfg = base.with_overrides(hand_overrides(trial.config))
    last: dict[str, float] = {}
    removed = False

    def tell(step: int, loss: float) -> bool:
        """Reports one result; True when the scheduler wants the trial stopped."""
        nonlocal removed
        last.update(val_loss=loss, steps=step)
        if scheduler.on_trial_result(trial, dict(last)) == SchedulerDecision.CONTINUE:
            return False
        scheduler.on_trial_remove(trial)  # the Tuner's call after STOP and after PAUSE
        removed = True
        return True

    def report(step: int, metrics: dict[str, float]) -> None:
        # at max_t BOHB always answers STOP: the run is over anyway, nothing to cut short
        if tell(step, metrics["val/loss"]) and step < max_steps:
            raise StopTraining("pruned")

    try:
        result = train(cfg, report=report)
        steps, value = result.steps, result.best_val_loss
    except DivergedError as e:
        if not math.isfinite(e.loss):  # a training script that crashed: a failed trial
            scheduler.on_trial_error(trial)
            return Evaluation(e.step, e.loss, False, trial.config)
        tell(e.step, e.loss)  # as Ray's trainable: the loss it blew up at, reported last
        steps, value = e.step, e.loss
    if not removed:
        scheduler.on_trial_complete(trial, dict(last))
    return Evaluation(steps, value, steps >= max_steps, trial.config)
