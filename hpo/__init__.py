"""hpo: Optuna-driven hyperparameter optimization for any PyTorch training code.

The public API (also the commands python -m hpo.run, hpo.worker, hpo.analyze, hpo.validate,
hpo.dashboard, which take a study YAML):

    tune(train, space=..., ...)       tune a training function; returns the Optuna study
    validate_winner(study, seeds=10)  its winner against its baseline, paired seeds, test split
    Run                               what a training function train(config, run) reports to
    Trainable                         a training function with hooks (hpo.trainable)
    StopTrial, Diverged, InvalidConfig, OutOfMemory, ContractError, HPOError

The package's own file map:

    doors (argparse only)
        run.py          python -m hpo.run: tune a study (--backend ray: hpo/raytune/)
        worker.py       python -m hpo.worker: join a running study from any machine
        analyze.py      python -m hpo.analyze: importance, range advice, plots
        validate.py     python -m hpo.validate: the winner against the baseline, many seeds
        dashboard.py    python -m hpo.dashboard: optuna-dashboard on hpo's storage
        flags.py        the flags several commands share (--study, --study-name, --storage)
        api.py          tune() and validate_winner(): the doors from Python
    the seam
        seam.py         Run (what a training function sees), execute (how every engine calls it)
        trainable.py    what hpo trains: "module:function", and the hooks a Trainable may answer
        gpt.py          the built-in GPT trainer (trainers/) as a trainable
        space.py        a study's search space: hpo's building blocks and the user's suggest
    core
        session.py      check a run's inputs, create or join a study, run it: banner, summary
        plan.py         WorkerPlan: what every worker of a study follows
        work.py         one worker's loop, and the supervision of several worker processes
        reevaluation.py a worker's seed re-runs of the incumbent, and the stop rule
        noise.py        seed noise: the companion study of re-runs, means, ties, the stop rule
        objective.py    the Optuna engine: an Optuna trial -> the trainable -> value and record
        record.py       TrialRecord: what a trial leaves in storage (one writer, one reader)
        study_spec.py   studies are data: the YAML schema and its checks
        strategy.py     the sampler and pruner of a study
        storage.py      SQLite / PostgreSQL, heartbeats, crashed trials retried
        manifest.py     what produced a number: code, packages, hardware, data, config
        progress.py     the live bar, one line per trial, the summary
        errors.py       HPOError (exit 2), StudyFailedError (exit 1): trainers.cli prints them
    engines
        raytune/        the Ray Tune backend (its own file map)
        tracking/       W&B, MLflow, or nothing (its own file map)
    read-only consumers of a study
        diagnostics.py, importance.py, plots.py   what hpo.analyze computes
        stats.py, sequential.py,                  what hpo.validate concludes (and when its
        validation_report.py                      seeds may stop)
        replay.py       python -m hpo.run --replay N: a trial trained again from its manifest
        artifacts.py    plots and reports attached to a study for the dashboard
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
    from hpo.errors import HPOError
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
    "tune",
    "validate_winner",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'hpo' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
