"""The tracker for some settings: the null one, W&B or MLflow."""

from __future__ import annotations

import functools

from hpo.tracking.base import Tracker
from hpo.tracking.mlflow_tracker import MlflowTracker
from hpo.tracking.settings import Tracking
from hpo.tracking.wandb_tracker import WandbTracker


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
