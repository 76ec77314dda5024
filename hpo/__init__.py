"""hpo: Optuna-driven hyperparameter optimization for any PyTorch training code.

The public API (also the commands python -m hpo.run, hpo.worker, hpo.analyze, hpo.validate,
hpo.dashboard, which take a study YAML):

    tune(train, space=..., ...)       tune a training function; returns the Optuna study
    validate_winner(study, seeds=10)  its winner against its baseline, paired seeds, test split
    Run                               what a training function train(config, run) reports to
    Trainable                         a training function with hooks (hpo.trainable)
    StopTrial, Diverged, InvalidConfig, OutOfMemory, ContractError, HPOError (the root of
                                      hpo's errors), UsageError (bad input)

The package's own file map (folders name the architecture):

    public API      __init__.py, api.py: tune() and validate_winner(), the doors from Python
    the seam        seam.py (Run, execute), trainable.py (what hpo trains, "module:function"),
                    space.py (a study's search space), gpt.py (the built-in GPT trainer, the
                    seam's first user)
    tuning core     session.py (check, create or join, run a study), plan.py (WorkerPlan),
                    trial_loop.py (one worker's loop; several worker processes supervised),
                    objective.py (an Optuna trial -> the trainable -> value and record),
                    strategy.py (sampler, pruner), devices.py (GPUs per worker), progress.py
                    (bar, lines, summary), study_spec.py (the YAML schema and its checks),
                    record.py (TrialRecord), manifest.py, noise.py and reevaluation.py (seed
                    noise while tuning), artifacts.py (files for the dashboard),
                    dashboard_server.py (optuna-dashboard on them), errors.py
                    (HPOError, the one root), storage.py (SQLite / PostgreSQL, heartbeats,
                    retries; the one module that touches Optuna's internals)
    cli/            the doors: flags -> a request dataclass -> one core call; command.py is
                    the one place an error becomes a line and an exit code. hpo/run.py,
                    worker.py, dashboard.py, analyze.py, validate.py only let `python -m
                    hpo.run` (...) reach them
    analysis/       analyze.py (hpo.analyze's core), importance.py, diagnostics.py,
                    plots.py
    validation/     validate.py (hpo.validate's core), stats.py, sequential.py, report.py,
                    replay.py (a trial trained again from its manifest)
    raytune/        the Ray Tune backend (its own file map)
    tracking/       W&B, MLflow, or nothing (its own file map)
    integrations/   the frameworks on the seam: huggingface.py (a transformers.Trainer),
                    lightning.py (a LightningModule), script.py (any command line); each
                    imported only by the code that uses it (optional extras)
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from optuna.exceptions import ExperimentalWarning

# heartbeats, group sampling and fail_stale_trials are stable in practice; the warnings only
# clutter every run's output
warnings.filterwarnings("ignore", category=ExperimentalWarning)

if TYPE_CHECKING:
    from hpo.api import tune, validate_winner
    from hpo.errors import HPOError, UsageError
    from hpo.seam import ContractError, Diverged, InvalidConfig, OutOfMemory, Run, StopTrial
    from hpo.trainable import Trainable

# Where each public name lives. Imported on first use, so that `import hpo` (which every
# command does first) does not load torch for a command that never trains (hpo.dashboard).
_PUBLIC = {
    "tune": "hpo.api",
    "validate_winner": "hpo.api",
    "Run": "hpo.seam",
    "StopTrial": "hpo.seam",
    "Diverged": "hpo.seam",
    "InvalidConfig": "hpo.seam",
    "OutOfMemory": "hpo.seam",
    "ContractError": "hpo.seam",
    "Trainable": "hpo.trainable",
    "HPOError": "hpo.errors",
    "UsageError": "hpo.errors",
}
__all__ = [
    "ContractError",
    "Diverged",
    "HPOError",
    "InvalidConfig",
    "OutOfMemory",
    "Run",
    "StopTrial",
    "Trainable",
    "UsageError",
    "tune",
    "validate_winner",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'hpo' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
