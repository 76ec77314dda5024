"""The artifact store next to the storage: plots and reports that optuna-dashboard shows.

A folder on disk ($HPO_ARTIFACTS or runs/artifacts); for plain optuna-dashboard pass it as
`optuna-dashboard <storage URL> --artifact-dir runs/artifacts`.
"""

from __future__ import annotations

import os
from pathlib import Path

from optuna.artifacts import FileSystemArtifactStore

from hpo.storage import runs_dir


def artifact_dir() -> Path:
    return Path(os.environ.get("HPO_ARTIFACTS") or runs_dir() / "artifacts")


def artifact_store() -> FileSystemArtifactStore:
    path = artifact_dir()
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))
