"""MLflow: one parent run per study, a nested run per trial (tag mlflow.parentRunId).

Named mlflow_tracker.py, not mlflow.py: `from mlflow import ...` here must find the library.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from hpo.storage import masked
from hpo.tracking.base import Tracker
from hpo.tracking.settings import DEFAULT_PROJECT, STUDY_ATTR, Tracking

log = logging.getLogger(__name__)

# MLflow's HTTP client retries 7 times with exponential backoff (minutes against a dead server);
# these defaults bound it to seconds. Set the variables yourself to override.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
PARAMS_PER_BATCH = 100  # the most MLflow takes in one log_batch


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
        parent = self._resumed_parent(study)
        if not parent:
            run = self.client.create_run(
                self.experiment_id(),
                run_name=study.study_name,
                tags={"hpo.study": study.study_name, "hpo.kind": "study"},
            )
            parent = run.info.run_id
        self.client.log_dict(parent, manifest, "manifest.json")
        return replace(self.settings, study=study.study_name, parent_run_id=parent)

    def _resumed_parent(self, study: optuna.Study) -> str:
        """The parent run a resumed study had in this store, running again; "" if none."""
        from mlflow.exceptions import MlflowException

        known = study.user_attrs.get(STUDY_ATTR, {})
        if known.get("backend") != "mlflow" or known.get("uri") != masked(self.settings.uri):
            return ""
        parent = known.get("parent_run_id", "")
        try:
            self.client.update_run(parent, status="RUNNING")
        except MlflowException as e:
            # the run is gone from the store (deleted, or a store recreated at the same URI):
            # the study gets a new parent run; a store that is down fails the next call too,
            # and the guard reports that
            log.debug("study %s: parent run %r not reusable (%s)", study.study_name, parent, e)
            return ""
        return parent

    def _close_study(self, study: optuna.Study) -> str | None:
        from mlflow.entities import Metric

        parent = self.settings.parent_run_id
        try:
            best = study.best_trial
        except ValueError:  # no completed trial: nothing to put on the study's run
            best = None
        if best is not None:
            now = _now_ms()
            metrics = [
                Metric("best/value", best.value, now, 0),
                Metric("best/trial", best.number, now, 0),
            ]
            self.client.log_batch(parent, metrics=metrics)
            self.client.set_tag(parent, "hpo.best_trial", str(best.number))
        self.client.set_terminated(parent, "FINISHED")
        where = masked(self.settings.uri)
        return (
            f"MLflow: study run {parent} in {where} (browse: mlflow ui --backend-store-uri {where})"
        )

    def _start(
        self, name: str, *, config: dict[str, Any], kind: str, meta: dict[str, Any]
    ) -> dict[str, Any]:
        tags = {"hpo.kind": kind, **{f"hpo.{k}": str(v) for k, v in meta.items()}}
        if self.settings.parent_run_id:
            tags["mlflow.parentRunId"] = self.settings.parent_run_id
        run = self.client.create_run(self.experiment_id(), run_name=name, tags=tags)
        self._run_id = run.info.run_id
        params = _params(config)
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self._run_id, params=params[i : i + PARAMS_PER_BATCH])
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


def _params(config: dict[str, Any]) -> list[Any]:
    """The trainer config as MLflow params, one per dotted key (model.n_layer, ...); the "hpo"
    group (study, trial number, sampled values) is in config.json instead."""
    from mlflow.entities import Param

    flat = {
        f"{group}.{key}": value
        for group, values in config.items()
        if group != "hpo" and isinstance(values, dict)
        for key, value in values.items()
    }
    return [Param(k, json.dumps(v) if isinstance(v, list) else str(v)) for k, v in flat.items()]


def _now_ms() -> int:
    return int(time.time() * 1000)
