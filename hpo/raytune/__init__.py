"""Run a study on Ray Tune: python -m hpo.run --study NAME --backend ray [--address auto]

The same study, search space, trainable and storage as the Optuna backend. Ray places the trials on
a cluster's CPUs and GPUs, decides which to stop early (ASHA, Hyperband, median stopping) or,
with population-based training (PBT, PB2), which to copy and perturb, and retries a crashed trial
from its last checkpoint.

    driver (this process)                                  workers (any node of the cluster)
    StudySearch = Ray's OptunaSearch on the study ───────► run_trial(config):
      ask + hpo.space.suggest(trial) -> overrides            train(config, run) (hpo.seam)
    scheduler (ASHA, Hyperband, PBT...) ◄── each report ──── tune.report(metrics, checkpoint)
    Recorder (a Tune callback) ──► the Optuna storage: intermediate values, user attrs, state

Only the driver writes to the storage: workers need neither the database nor its driver, and a
Ray-run trial looks like any other to hpo.dashboard, hpo.analyze and hpo.validate. A trial that
Ray stops early is PRUNED; one that finishes its steps (or early-stops) is COMPLETE, its value the
best evaluation, as with Optuna. Ray's own Optuna searcher runs without Optuna pruners, so
pruning is Ray's scheduler's job; the study's pruner picks the scheduler unless told otherwise.

Interrupted (Ctrl-C, SIGTERM, a dead driver): rerunning the same command restores the Ray
experiment, continuing unfinished trials from their checkpoints into the same Optuna trials, then
tops the study up to --trials. One Ray driver per study at a time; Optuna workers may join it.

The files, in the order a run meets them:
    options.py     the flags and the study, checked before anything starts (RayOptions)
    cluster.py     start a local Ray or join a cluster; fail fast when it cannot be reached
    backend.py     ray_main: restore an interrupted experiment, top the study up, report
    tuner.py       one Ray experiment: the Tuner's searcher, scheduler, resources, checkpoints
    search.py      trials' configs from the study's sampler and space (PBT: the population)
    schedulers.py  ASHA, Hyperband, median stopping, FIFO, and PBT/PB2 with their mutations
    trainable.py   run_trial: what runs on the workers (the trainable, its reports to Tune)
    recorder.py    the driver's side: Ray's trial events written into the Optuna storage
    reevaluations.py  seed re-runs of the incumbent (hpo.noise) as Ray tasks between trials

Not called `hpo/ray`: run as a script (`python hpo/run.py`), hpo/ is on sys.path and a folder
named ray there would shadow the real `import ray`.
"""

from hpo.raytune.backend import ray_main
from hpo.raytune.options import RayRequest

__all__ = ["RayRequest", "ray_main"]
