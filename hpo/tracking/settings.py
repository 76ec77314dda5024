"""Where a process tracks: the picklable `Tracking` settings, every default made explicit, and
the copy a study keeps so that a worker joining it from elsewhere tracks to the same place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import optuna

from hpo.errors import UsageError
from hpo.storage import runs_dir
from hpo.study_spec import TRACKERS

BACKENDS = TRACKERS
DEFAULT_PROJECT = "hpo"  # W&B project and MLflow experiment, unless the study or env says
STUDY_ATTR = "hpo.tracking"  # where a study keeps its tracking (backend, uri, parent run)


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
        raise UsageError(f"tracking must be one of {', '.join(BACKENDS)}, but got {backend!r}")
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
