"""A worker's part in measuring seed noise (hpo.noise): between search trials, it trains the
incumbent again with its next seed when one is due, and applies the stop rule.

A re-evaluation is queued on the companion study and then taken from its queue by the same
worker, so Optuna's queue hands each one to exactly one worker, and one left queued by a worker
that died (or retried after its crash) is run by the next worker that comes by.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import noise
from hpo import record as records
from hpo.objective import Objective, SurplusTrialError, TrialFailed, checkpoint_dir
from hpo.plan import WorkerPlan
from hpo.record import TrialRecord
from hpo.storage import fail_crashed_trials
from hpo.study_spec import NoiseSpec
from hpo.tracking import Tracker

NO_TARGET = 2**62  # re-evaluations are not counted against --trials


class Reevaluations:
    """Built once per worker; `run_due` and `should_stop` are called between search trials."""

    def __init__(self, plan: WorkerPlan) -> None:
        spec = plan.study_spec
        self.settings = spec.noise
        self.minimize = spec.objective.minimize
        self.metric = spec.objective.metric
        self.root = Path(plan.checkpoint_root) / "seeds"
        self.objective = Objective(
            spec,
            sets=plan.sets,
            target=NO_TARGET,
            checkpoint_root=self.root,
            tracker=Tracker(),
            gpu=plan.gpu,
            shared_gpu=plan.shares_gpu,
        )

    @property
    def enabled(self) -> bool:
        return self.settings.seeds > 0

    def run_due(self, study: optuna.Study) -> bool:
        """Run one re-evaluation if one is queued or due; True if one ran."""
        if not self.enabled:
            return False
        seeds_study = noise.open_seeds_study(study)
        fail_crashed_trials(seeds_study)  # a dead worker's re-evaluation is queued again
        if not queue_due(study, seeds_study, self.settings, self.minimize):
            return False
        ran: list[FrozenTrial] = []
        catch = (TrialFailed, SurplusTrialError)
        callbacks = [lambda _, t: ran.append(t)]
        seeds_study.optimize(self._objective, n_trials=1, catch=catch, callbacks=callbacks)
        done = ran[0]
        shutil.rmtree(checkpoint_dir(self.root, done.number), ignore_errors=True)
        say(study, seeds_study, done, self.metric)
        return True

    def should_stop(self, study: optuna.Study) -> bool:
        """The stop rule (see `stop_below_noise`)."""
        return self.settings.stop_below_noise and stop_below_noise(study, self.minimize)

    def _objective(self, trial: optuna.Trial) -> float:
        record = TrialRecord.of(trial)
        if record.reevaluates is None:
            # another worker took the queued one first; this trial was made by an empty queue
            records.write(trial, TrialRecord(stop_reason=records.SURPLUS))
            raise SurplusTrialError("no re-evaluation left in the queue")
        # two workers that found the same one due at the same moment queued it twice: the
        # second to start gives way (both, if they start together: it is queued again later)
        pair = (record.reevaluates, record.seed_index)
        states = (TrialState.RUNNING, TrialState.COMPLETE)
        twins = [
            t.number
            for t in trial.study.get_trials(deepcopy=False, states=states)
            if t.number != trial.number and noise.pair_of(t) == pair
        ]
        if twins:
            message = f"surplus: trial {twins[0]} of this study runs the same seed"
            records.write(trial, replace(record, stop_reason=records.SURPLUS, fail_reason=message))
            raise SurplusTrialError(message)
        return self.objective(trial)


def queue_due(
    study: optuna.Study, seeds_study: optuna.Study, settings: NoiseSpec, minimize: bool
) -> bool:
    """True when a re-evaluation waits in the companion's queue: one left there (a dead
    worker's retry), or the one due now, queued here. Either backend then takes it."""
    if seeds_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return True
    due = due_reevaluation(study, seeds_study, settings, minimize)
    if due is None:
        return False
    number, k = due
    params = study.get_trials(deepcopy=False)[number].params
    records.enqueue(seeds_study, params, TrialRecord(reevaluates=number, seed_index=k))
    return True


def due_reevaluation(
    study: optuna.Study, seeds_study: optuna.Study, settings: NoiseSpec, minimize: bool
) -> tuple[int, int] | None:
    """(trial, seed index) that is due now (hpo.noise.next_reevaluation), for either backend."""
    runs = noise.runs_of(study, seeds_study)
    measured = noise.estimate_runs(runs, minimize=minimize)
    if measured.best is None:
        return None
    best = study.get_trials(deepcopy=False)[measured.best]
    return noise.next_reevaluation(
        measured,
        noise.spent(runs),
        seeds=settings.seeds,
        max_share=settings.max_share,
        full_tokens=TrialRecord.of(best).max_compute or 0,
        taken=noise.reevaluations(seeds_study),
        in_flight=noise.reevaluations(seeds_study, (TrialState.WAITING, TrialState.RUNNING)),
    )


def stop_below_noise(study: optuna.Study, minimize: bool) -> bool:
    """True once the study's gains fell below the seed noise: recorded on the study with its
    numbers (so every worker, the Ray searcher and a rerun see it) and printed once."""
    if study.user_attrs.get(noise.STOPPED):
        return True
    runs = noise.runs_of(study, noise.find_seeds_study(study))
    decision = noise.gains_below_noise(runs, minimize=minimize)
    if decision is None or not decision.stop:
        return False
    study.set_user_attr(noise.STOPPED, decision.to_json())
    print(f"stopping the study: {decision.describe()}", file=sys.stderr)
    return True


def say(study: optuna.Study, seeds_study: optuna.Study, done: FrozenTrial, metric: str) -> None:
    """One line for a finished re-evaluation: its value and its trial's mean so far."""
    record = TrialRecord.of(done)
    if record.reevaluates is None or record.stop_reason == records.SURPLUS:
        return
    if done.state != TrialState.COMPLETE:
        why = record.fail_reason or done.state.name.lower()
        print(f"re-evaluation of trial {record.reevaluates} failed: {why}", file=sys.stderr)
        return
    measured = noise.measure(study, seeds_study)
    n = record.reevaluates
    print(
        f"trial {n:>3} again with seed +{record.seed_index}  {metric} {done.value:.4f}  "
        f"mean of its {measured.n_seeds(n)} re-evaluation(s): {measured.mean(n):.4f}",
        file=sys.stderr,
    )
