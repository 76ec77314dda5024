"""Experiment tracking: each trial as a Weights & Biases or MLflow run, or nothing (the default).

Who calls what:
- hpo.run (main process) builds a Tracker from `Tracking` settings, calls `open_study` once
  (MLflow: the study's parent run; W&B: checks its folder) and `close_study` at the end (MLflow:
  the best values on the parent run; W&B offline: the `wandb sync` command to print).
- Each worker builds its own Tracker from the same picklable settings; the Objective wraps a
  trial in `tracker.trial(trial)`, calls `start_trial` once the config is resolved, `log` at every
  evaluation and `log_manifest` when training ends. The run ends with the trial, tagged
  complete, pruned or failed.
- hpo.validate wraps each (config, seed) in `tracker.run(name, ...)`.

`Tracker` itself is the null object (tracking off). A backend only implements the `_` hooks; the
public methods guard them: the first exception (unwritable folder, unreachable server, a bug in a
tracking library) is logged once as a warning and turns the tracker off. Tracking never fails a
trial.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import netrc
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna

from hpo.errors import HPOError
from hpo.storage import masked, runs_dir
from hpo.study_spec import TRACKERS
from trainers import TrainConfig

log = logging.getLogger(__name__)

BACKENDS = TRACKERS
DEFAULT_PROJECT = "hpo"  # W&B project and MLflow experiment, unless the study or env says
STUDY_ATTR = "hpo.tracking"  # where a study keeps its tracking (backend, uri, parent run)
# MLflow's HTTP client retries 7 times with exponential backoff (minutes against a dead server);
# these defaults bound it to seconds. Set the variables yourself to override.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


@dataclass(frozen=True)
class Tracking:
    """Where a worker tracks (picklable: crosses into spawned worker processes)."""

    backend: str = "none"  # none | wandb | mlflow
    uri: str = ""  # MLflow: tracking URI (server URL, sqlite:///...); W&B: folder for run files
    project: str = ""  # W&B project / MLflow experiment ("" = $WANDB_PROJECT, hpo)
    study: str = ""  # W&B group, MLflow parent run's name
    parent_run_id: str = ""  # MLflow: the study's parent run, filled by open_study


def resolve_tracking(
    backend: str | None, *, uri: str | None = None, project: str | None = None, study: str = ""
) -> Tracking:
    """Settings with every default made explicit, so that all workers track to the same place."""
    backend = backend or "none"
    if backend not in BACKENDS:
        raise HPOError(f"tracking must be one of {', '.join(BACKENDS)}, but got {backend!r}")
    if backend == "mlflow":
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri()
        project = project or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
    elif backend == "wandb":
        uri = str(Path(uri or os.environ.get("WANDB_DIR") or runs_dir()).resolve())
        project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
    return Tracking(backend=backend, uri=uri or "", project=project or "", study=study)


def tracking_from_study(study: optuna.Study) -> Tracking:
    """The tracking `hpo.run` opened for this study, for a worker that joins it from elsewhere
    (a URI with a password is stored masked: such a worker needs --tracking-uri itself)."""
    known = study.user_attrs.get(STUDY_ATTR) or {}
    if known.get("backend") not in ("wandb", "mlflow"):
        return Tracking()
    return Tracking(
        backend=known["backend"],
        uri=known.get("uri", ""),
        project=known.get("project", ""),
        study=study.study_name,
        parent_run_id=known.get("parent_run_id", ""),
    )


def default_mlflow_uri() -> str:
    """MLflow's file store is in maintenance mode (MLflow 3 refuses it without an opt-out), so
    the local default is a SQLite database beside the study database."""
    return f"sqlite:///{(runs_dir() / 'mlflow.db').resolve()}"


def make_tracker(settings: Tracking) -> Tracker:
    if settings.backend == "wandb":
        return WandbTracker(settings)
    if settings.backend == "mlflow":
        return MlflowTracker(settings)
    return Tracker(settings)


@functools.cache
def tracker_for(settings: Tracking) -> Tracker:
    """One tracker per process and settings, so that one that failed stays off (warned once)."""
    return make_tracker(settings)


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
    def run(self, name: str, *, config: dict[str, Any], kind: str, meta: dict[str, Any]):
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
            self.finish("pruned")
            raise
        except BaseException as e:
            if self.active:
                self.finish("failed", reason=_trial_reason(trial, e))
            raise
        self.finish("complete")

    def start_trial(
        self, trial: optuna.Trial, cfg: TrainConfig, *, metric: str, direction: str
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
        config = {**cfg.to_dict(), "hpo": hpo}
        ids = self.start_run(
            f"trial_{trial.number}",
            config=config,
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


class WandbTracker(Tracker):
    """One W&B run per trial: grouped by study, named trial_N, offline when no API key is set."""

    def __init__(self, settings: Tracking) -> None:
        super().__init__(settings)
        self.mode = wandb_mode()
        self._run: Any = None

    @property
    def root(self) -> Path:
        return Path(self.settings.uri or runs_dir())

    def _open_study(self, study: optuna.Study, manifest: dict[str, Any]) -> Tracking:
        _check_writable(self.root)
        import wandb  # noqa: F401  (fail here, once, if it is not installed)

        return replace(self.settings, study=study.study_name)

    def _close_study(self, study: optuna.Study) -> str | None:
        if self.mode != "offline":
            return None
        return (
            f"W&B ran offline; to upload the runs: wandb sync {self.root / 'wandb'}/offline-run-*"
        )

    def _start(
        self, name: str, *, config: dict[str, Any], kind: str, meta: dict[str, Any]
    ) -> dict[str, Any]:
        import wandb

        _check_writable(self.root)  # else wandb quietly writes to a temp folder instead
        study = meta.get("study") or self.settings.study
        self._run = wandb.init(
            project=self.settings.project or DEFAULT_PROJECT,
            group=study or None,
            name=name,
            job_type=kind,
            config=config,
            tags=[t for t in (study, kind) if t],
            dir=str(self.root),
            mode=self.mode,
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )
        return {"backend": "wandb", "run_id": self._run.id, "dir": str(Path(self._run.dir).parent)}

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def _manifest(self, manifest: dict[str, Any]) -> None:
        env = {k: v for k, v in manifest.items() if k != "config"}  # the config is there already
        self._run.config.update({"manifest": env}, allow_val_change=True)
        path = Path(self._run.dir) / "manifest.json"
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))

    def _summarize(self, values: dict[str, Any]) -> None:
        self._run.summary.update(values)

    def _finish(self, state: str, reason: str) -> None:
        run, self._run = self._run, None
        run.tags = (*run.tags, *(t for t in (state, reason) if t))
        run.finish(exit_code=1 if state == "failed" else 0)


def wandb_mode() -> str:
    """offline unless an API key is there ($WANDB_API_KEY or ~/.netrc), or $WANDB_MODE says."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode in ("online", "disabled"):
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return "online" if netrc.netrc().authenticators(host or "") else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


class MlflowTracker(Tracker):
    """One parent run per study, a nested run per trial (tag mlflow.parentRunId)."""

    def __init__(self, settings: Tracking) -> None:
        super().__init__(settings)
        self._client: Any = None
        self._experiment_id = ""
        self._run_id = ""

    @property
    def client(self) -> Any:
        if self._client is None:
            if self.settings.uri.startswith(("http://", "https://")):
                for key, value in MLFLOW_HTTP_DEFAULTS.items():
                    os.environ.setdefault(key, value)
                # urllib3 warns at every retry; one warning of ours says it all
                logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
            from mlflow import MlflowClient  # sets up its loggers on import

            for name in ("mlflow", "alembic"):  # their INFO lines (creating tables) are noise here
                logging.getLogger(name).setLevel(logging.WARNING)
            with warnings.catch_warnings():  # its SQL store uses SQLAlchemy APIs 2.1 deprecates
                warnings.simplefilter("ignore", DeprecationWarning)
                self._client = MlflowClient(tracking_uri=self.settings.uri)
        return self._client

    def experiment_id(self) -> str:
        if not self._experiment_id:
            name = self.settings.project or DEFAULT_PROJECT
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                self._experiment_id = experiment.experiment_id
            else:
                artifacts = None
                if self.settings.uri.startswith("sqlite:///"):  # artifacts beside the database
                    db = Path(self.settings.uri.removeprefix("sqlite:///"))
                    artifacts = (db.parent / "mlflow-artifacts").resolve().as_uri()
                self._experiment_id = self.client.create_experiment(
                    name, artifact_location=artifacts
                )
        return self._experiment_id

    def _open_study(self, study: optuna.Study, manifest: dict[str, Any]) -> Tracking:
        known = study.user_attrs.get(STUDY_ATTR, {})
        parent = ""
        if known.get("backend") == "mlflow" and known.get("uri") == masked(self.settings.uri):
            parent = known.get("parent_run_id", "")
            try:
                self.client.update_run(parent, status="RUNNING")  # a resumed study: same parent
            except Exception:
                parent = ""
        if not parent:
            run = self.client.create_run(
                self.experiment_id(),
                run_name=study.study_name,
                tags={"hpo.study": study.study_name, "hpo.kind": "study"},
            )
            parent = run.info.run_id
        self.client.log_dict(parent, manifest, "manifest.json")
        return replace(self.settings, study=study.study_name, parent_run_id=parent)

    def _close_study(self, study: optuna.Study) -> str | None:
        from mlflow.entities import Metric

        parent = self.settings.parent_run_id
        try:
            best = study.best_trial
        except ValueError:  # no completed trial
            best = None
        if best is not None:
            now = _now_ms()
            self.client.log_batch(
                parent,
                metrics=[Metric("best/value", best.value, now, 0),
                         Metric("best/trial", best.number, now, 0)],
            )  # fmt: skip
            self.client.set_tag(parent, "hpo.best_trial", str(best.number))
        self.client.set_terminated(parent, "FINISHED")
        where = masked(self.settings.uri)
        return (
            f"MLflow: study run {parent} in {where} (browse: mlflow ui --backend-store-uri {where})"
        )

    def _start(
        self, name: str, *, config: dict[str, Any], kind: str, meta: dict[str, Any]
    ) -> dict[str, Any]:
        from mlflow.entities import Param

        tags = {"hpo.kind": kind, **{f"hpo.{k}": str(v) for k, v in meta.items()}}
        if self.settings.parent_run_id:
            tags["mlflow.parentRunId"] = self.settings.parent_run_id
        run = self.client.create_run(self.experiment_id(), run_name=name, tags=tags)
        self._run_id = run.info.run_id
        flat = {f"{group}.{key}": value
                for group, values in config.items() if group != "hpo" and isinstance(values, dict)
                for key, value in values.items()}  # fmt: skip
        params = [
            Param(k, json.dumps(v) if isinstance(v, list) else str(v)) for k, v in flat.items()
        ]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self._run_id, params=params[i : i + 100])
        self.client.log_dict(self._run_id, config, "config.json")
        return {
            "backend": "mlflow",
            "run_id": self._run_id,
            "parent_run_id": self.settings.parent_run_id,
            "experiment_id": self.experiment_id(),
            "uri": masked(self.settings.uri),
        }

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        batch = [Metric(k, v, now, step) for k, v in metrics.items() if math.isfinite(v)]
        self.client.log_batch(self._run_id, metrics=batch)

    def _manifest(self, manifest: dict[str, Any]) -> None:
        self.client.log_dict(self._run_id, manifest, "manifest.json")
        self.client.set_tag(self._run_id, "hpo.git_commit", str(manifest["git"].get("commit")))
        self.client.set_tag(
            self._run_id, "hpo.corpus_fingerprint", str(manifest["data"].get("fingerprint"))
        )

    def _summarize(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items()]
        self.client.log_batch(self._run_id, metrics=metrics)

    def _finish(self, state: str, reason: str) -> None:
        self.client.set_tag(self._run_id, "hpo.state", state)
        if reason:
            self.client.set_tag(self._run_id, "hpo.fail_reason", reason)
        self.client.set_terminated(self._run_id, "FAILED" if state == "failed" else "FINISHED")


def _check_writable(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def _now_ms() -> int:
    return int(time.time() * 1000)


def _reason(e: BaseException) -> str:
    return "interrupted" if isinstance(e, KeyboardInterrupt) else type(e).__name__


def _trial_reason(trial: optuna.Trial, e: BaseException) -> str:
    """The Objective's stop reason (diverged, out_of_memory, ...) when it recorded one."""
    try:
        return str(trial.user_attrs.get("stop_reason") or _reason(e))
    except Exception:
        return _reason(e)
