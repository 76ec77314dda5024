"""`Tracker`: the null tracker (tracking off), and the guarded front of every backend.

A backend overrides only the `_` hooks at the bottom. Every public method that reaches a hook
goes through `_guarded`: the first exception is logged once as a warning and turns the tracker
off, so that tracking never fails a trial.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import optuna

from hpo.record import DIVERGED, TrialRecord
from hpo.storage import masked
from hpo.tracking.settings import STUDY_ATTR, Tracking
from hpo.trainable import nest

log = logging.getLogger(__name__)


def _guarded(method: Callable) -> Callable:
    @functools.wraps(method)
    def call(self: Tracker, *args: Any, **kwargs: Any) -> Any:
        if self.off:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            self.off = True
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            log.warning(
                "tracking to %s%s failed (%s: %s); tracking is off for the rest of this "
                "process, trials go on",
                self.settings.backend,
                f" at {masked(self.settings.uri)}" if self.settings.uri else "",
                type(e).__name__,
                reason[:200],
            )
            return None

    return call


class Tracker:
    """The null tracker (tracking off), and the guarded front of every backend."""

    def __init__(self, settings: Tracking | None = None) -> None:
        self.settings = settings or Tracking()
        self.off = self.settings.backend == "none"
        self.active = False  # a run is open
        self.overhead_s = 0.0  # time spent in the backend (benchmarks/tracking_overhead.py)
        self._metric, self._direction = "", "minimize"
        self._best: tuple[float, int] | None = None  # (value, step) of the objective metric
        self._last_step = 0

    # -- the study (main process) --

    @_guarded
    def open_study(self, study: optuna.Study, manifest: dict[str, Any]) -> Tracking:
        """Prepare the study's tracking; returns the settings workers should use."""
        settings = self._open_study(study, manifest)
        study.set_user_attr(
            STUDY_ATTR,
            {
                "backend": settings.backend,
                "uri": masked(settings.uri),
                "project": settings.project,
                "parent_run_id": settings.parent_run_id,
            },
        )
        self.settings = settings
        return settings

    @_guarded
    def close_study(self, study: optuna.Study) -> str | None:
        """Finish the study's tracking; returns a line for the user (where the runs are)."""
        return self._close_study(study)

    # -- one run: a trial, or a validation seed --

    @_guarded
    def start_run(
        self, name: str, *, config: dict[str, Any], kind: str, meta: dict[str, Any]
    ) -> dict[str, Any]:
        """Open a run; returns its ids (what to store beside the result)."""
        t = time.perf_counter()
        ids = self._start(name, config=config, kind=kind, meta=meta)
        self.active, self._best, self._last_step = True, None, 0
        self.overhead_s += time.perf_counter() - t
        return ids

    @_guarded
    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        t = time.perf_counter()
        value = metrics.get(self._metric)
        if value is not None and math.isfinite(value):
            best = self._best[0] if self._best is not None else None
            if best is None or (value < best if self._direction == "minimize" else value > best):
                self._best = (value, step)
        self._last_step = step
        self._log(step, {k: float(v) for k, v in metrics.items()})
        self.overhead_s += time.perf_counter() - t

    @_guarded
    def log_manifest(self, manifest: dict[str, Any]) -> None:
        if self.active:
            t = time.perf_counter()
            self._manifest(manifest)
            self.overhead_s += time.perf_counter() - t

    @_guarded
    def summarize(self, values: dict[str, Any]) -> None:
        """Final values of the run (test scores, best values), beside its history."""
        if self.active:
            self._summarize(values)

    def finish(self, state: str, *, reason: str = "") -> None:
        """End the open run as complete, pruned or failed (with why)."""
        if not self.active:
            return
        self.active = False
        self._finish_guarded(state, reason)

    @_guarded
    def _finish_guarded(self, state: str, reason: str) -> None:
        t = time.perf_counter()
        if self._best is not None:
            best, step = self._best
            self._summarize({f"best/{self._metric}": best, "best/step": step})
        self._finish(state, reason)
        self.overhead_s += time.perf_counter() - t

    @contextlib.contextmanager
    def run(
        self, name: str, *, config: dict[str, Any], kind: str, meta: dict[str, Any]
    ) -> Iterator[Tracker]:
        """start_run ... finish, the state taken from how the block ends."""
        self.start_run(name, config=config, kind=kind, meta=meta)
        try:
            yield self
        except BaseException as e:
            self.finish("failed", reason=_reason(e))
            raise
        self.finish("complete")

    # -- a trial (the Objective) --

    @contextlib.contextmanager
    def trial(self, trial: optuna.Trial) -> Iterator[Tracker]:
        """Ends the trial's run (opened by start_trial) with the trial's state."""
        try:
            yield self
        except optuna.TrialPruned:
            # a diverged trial is pruned too (hpo.objective); its run says why
            diverged = _stop_reason(trial) == DIVERGED
            self.finish("pruned", reason=DIVERGED if diverged else "")
            raise
        except BaseException as e:
            if self.active:
                # the Objective's stop reason (out_of_memory, ...) when it recorded one
                self.finish("failed", reason=_stop_reason(trial) or _reason(e))
            raise
        self.finish("complete")

    def start_trial(
        self, trial: optuna.Trial, config: dict[str, Any], *, metric: str, direction: str
    ) -> None:
        """Open the trial's run with its resolved config; its ids go on the trial."""
        if self.off:
            return
        self._metric, self._direction = metric, direction
        if self.settings.backend == "mlflow" and not self.settings.parent_run_id:
            # a worker started without the main process's settings (another machine): the
            # study holds its parent run
            parent = trial.study.user_attrs.get(STUDY_ATTR, {}).get("parent_run_id", "")
            self.settings = replace(self.settings, parent_run_id=parent)
        study = trial.study.study_name
        hpo = {"study": study, "trial": trial.number, "params": trial.params}
        ids = self.start_run(
            f"trial_{trial.number}",
            config={**nest(config), "hpo": hpo},
            kind="trial",
            meta={"study": study, "trial": trial.number},
        )
        if ids:
            trial.set_user_attr("tracking", ids)

    # -- backend hooks: the null tracker does nothing --

    def _open_study(self, study: optuna.Study, manifest: dict[str, Any]) -> Tracking:
        return self.settings

    def _close_study(self, study: optuna.Study) -> str | None:
        return None

    def _start(
        self, name: str, *, config: dict[str, Any], kind: str, meta: dict[str, Any]
    ) -> dict[str, Any]:
        return {}

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def _manifest(self, manifest: dict[str, Any]) -> None:
        pass

    def _summarize(self, values: dict[str, Any]) -> None:
        pass

    def _finish(self, state: str, reason: str) -> None:
        pass


def _reason(e: BaseException) -> str:
    return "interrupted" if isinstance(e, KeyboardInterrupt) else type(e).__name__


def _stop_reason(trial: optuna.Trial) -> str:
    """The stop reason the Objective recorded on the trial ("" if none, or unreadable)."""
    try:
        return str(TrialRecord.of(trial).stop_reason or "")
    except Exception as e:
        # this runs while the trial is already ending with an exception of its own, often
        # because the storage went away: the reason is only a tag on the run, and a second
        # failure here must not replace the trial's exception, so the run goes without it
        log.debug("could not read trial %d's stop reason: %r", trial.number, e)
        return ""
