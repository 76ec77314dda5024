"""The artifact store next to the storage: plots and reports that optuna-dashboard shows.

A folder on disk ($HPO_ARTIFACTS or runs/artifacts); for plain optuna-dashboard pass it as
`optuna-dashboard <storage URL> --artifact-dir runs/artifacts`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore

from hpo.storage import runs_dir

# hpo.validate's section of a study's note; hpo.analyze rewrites the rest and keeps it
VALIDATION_HEADING = "## Validation on the test split"


def artifact_dir() -> Path:
    return Path(os.environ.get("HPO_ARTIFACTS") or runs_dir() / "artifacts")


def artifact_store() -> FileSystemArtifactStore:
    path = artifact_dir()
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def upload(study: optuna.Study, paths: Sequence[Path]) -> None:
    """Attach files to the study; a file uploaded before under the same name is replaced in
    place, so rerunning a report does not pile up copies in the dashboard."""
    store = artifact_store()
    existing = {m.filename: m.artifact_id for m in optuna.artifacts.get_all_artifact_meta(study)}
    for path in paths:
        if path.name in existing:
            with path.open("rb") as f:
                store.write(existing[path.name], f)
        else:
            optuna.artifacts.upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=study
            )
