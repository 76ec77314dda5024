"""hpo: Optuna-driven hyperparameter optimization for the PyTorch trainer in `trainers`."""

import warnings

from optuna.exceptions import ExperimentalWarning

# heartbeats, group sampling and fail_stale_trials are stable in practice; the warnings only
# clutter every run's output
warnings.filterwarnings("ignore", category=ExperimentalWarning)
