"""hpo: Optuna-driven hyperparameter optimization for the PyTorch trainer in `trainers`.

Entry points read their flags and call the core; they never call each other with an argv.

    entry points (argparse only)
        run.py          python -m hpo.run: tune a study (--backend ray: hpo/raytune/)
        worker.py       python -m hpo.worker: join a running study from any machine
        analyze.py      python -m hpo.analyze: importance, range advice, plots
        validate.py     python -m hpo.validate: the winner against the baseline, many seeds
        dashboard.py    python -m hpo.dashboard: optuna-dashboard on hpo's storage
        flags.py        the flags several commands share (--study, --study-name, --storage)
    core
        session.py      check a run's inputs, create or join a study, run it: banner, summary
        plan.py         WorkerPlan: what every worker of a study follows
        work.py         one worker's loop, and the supervision of several worker processes
        reevaluation.py a worker's seed re-runs of the incumbent, and the stop rule
        noise.py        seed noise: the companion study of re-runs, means, ties, the stop rule
        objective.py    an Optuna trial -> the trainer -> the trial's value and record
        record.py       TrialRecord: what a trial leaves in storage (one writer, one reader)
        study_spec.py   studies are data: the YAML schema and its checks
        strategy.py     the sampler and pruner of a study
        budget.py       equal compute per trial when the batch size or context is tuned
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

import warnings

from optuna.exceptions import ExperimentalWarning

# heartbeats, group sampling and fail_stale_trials are stable in practice; the warnings only
# clutter every run's output
warnings.filterwarnings("ignore", category=ExperimentalWarning)
