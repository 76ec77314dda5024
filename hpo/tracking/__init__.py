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

Files:
- settings.py        `Tracking` (picklable settings), their defaults, the study's stored copy
- base.py            `Tracker`: the null tracker, the guard around every backend hook, a
                     trial's run ending with the trial's state
- wandb_tracker.py   `WandbTracker`, `wandb_mode` (offline without an API key)
- mlflow_tracker.py  `MlflowTracker`: a parent run per study, a nested run per trial
- factory.py         `make_tracker`, `tracker_for` (one per process and settings)

The backend modules are not named wandb.py / mlflow.py so that they never stand in for the
libraries they import.
"""

from hpo.tracking.base import Tracker
from hpo.tracking.factory import make_tracker, tracker_for
from hpo.tracking.mlflow_tracker import MLFLOW_HTTP_DEFAULTS, MlflowTracker
from hpo.tracking.settings import (
    BACKENDS,
    DEFAULT_PROJECT,
    STUDY_ATTR,
    Tracking,
    default_mlflow_uri,
    resolve_tracking,
    tracking_from_study,
)
from hpo.tracking.wandb_tracker import WandbTracker, wandb_mode

__all__ = [
    "BACKENDS",
    "DEFAULT_PROJECT",
    "MLFLOW_HTTP_DEFAULTS",
    "STUDY_ATTR",
    "MlflowTracker",
    "Tracker",
    "Tracking",
    "WandbTracker",
    "default_mlflow_uri",
    "make_tracker",
    "resolve_tracking",
    "tracker_for",
    "tracking_from_study",
    "wandb_mode",
]
