"""Run a study on Ray Tune: python -m hpo.run --study NAME --backend ray [--address auto]

The same study, search space, trainer and storage as the Optuna backend. Ray places the trials on
a cluster's CPUs and GPUs, decides which to stop early (ASHA, Hyperband, median stopping) or,
with population-based training (PBT, PB2), which to copy and perturb, and retries a crashed trial
from its last checkpoint.

    driver (this process)                                  workers (any node of the cluster)
    StudySearch = Ray's OptunaSearch on the study ───────► run_trial(config):
      ask + search_spaces.suggest(trial) -> overrides        train(cfg, report=..., checkpoint_dir)
    scheduler (ASHA, Hyperband, PBT...) ◄── each eval ────── tune.report(metrics, checkpoint)
    Recorder (a Tune callback) ──► the Optuna storage: intermediate values, user attrs, state

Only the driver writes to the storage: workers need neither the database nor its driver, and a
Ray-run trial looks like any other to hpo.dashboard, hpo.analyze and hpo.validate. A trial that
Ray stops early is PRUNED; one that finishes its steps (or early-stops) is COMPLETE, its value the
best evaluation, as with Optuna. Ray's own Optuna searcher runs without Optuna pruners, so
pruning is Ray's scheduler's job; the study's pruner picks the scheduler unless told otherwise
(hpo/ray_pbt.py: the schedulers, population-based training among them).

Interrupted (Ctrl-C, SIGTERM, a dead driver): rerunning the same command restores the Ray
experiment, continuing unfinished trials from their checkpoints into the same Optuna trials, then
tops the study up to --trials. One Ray driver per study at a time; Optuna workers may join it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.search.optuna import OptunaSearch

import search_spaces
from hpo import run
from hpo.errors import HPOError
from hpo.manifest import trial_manifest
from hpo.objective import COUNTED, IN_PLAY, clean_checkpoints
from hpo.progress import Progress, summary
from hpo.ray_pbt import (
    PBT_SCHEDULERS,
    PRUNER_TO_SCHEDULER,
    Member,
    current_values,
    make_scheduler,
    mutation_bounds,
    pbt_mutations,
    perturbed,
    starting_values,
)
from hpo.storage import HEARTBEAT_INTERVAL_S, masked, open_storage, runs_dir
from hpo.strategy import make_sampler
from hpo.study_spec import SCHEDULERS, StudySpec, load_study_spec
from trainers import (
    DivergedError,
    OutOfMemoryError,
    TrainConfig,
    TrainerError,
    TrainResult,
    UsageError,
    parse_sets,
    resolve_seeds,
    train,
)
from trainers.data import Data, load_data
from trainers.device import resolve_device
from trainers.model import build_model, count_params

log = logging.getLogger("hpo.ray")

ORIGIN = "origin.json"  # in each checkpoint: whose state it is and at which step
PASS_ENV = ("HPO_CACHE", "HF_HOME", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")  # to workers
CONNECT_TIMEOUT_S = 5.0
RAY_FLAGS = ("address", "scheduler", "cpus_per_trial", "gpus_per_trial", "max_concurrent",
             "ray_storage")  # fmt: skip


@dataclass(frozen=True)
class RayOptions:
    address: str | None  # None: start a local Ray on this machine
    scheduler: str
    cpu: float
    gpu: float
    max_concurrent: int | None
    storage_path: str  # where Ray keeps experiment state and checkpoints (shared across nodes)
    mutations: tuple[str, ...] = ()  # PBT/PB2: the config keys they perturb


class Timing:
    """Ray's start-up cost, for the summary (and benchmarks/ray_vs_optuna.py)."""

    init_start: float | None = None
    init_end: float | None = None


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its config (shipped once to the workers)."""

    spec: dict[str, Any]  # StudySpec.to_json(): workers need not see the YAML file
    sets: dict[str, Any]
    threads: int
    direction: str


# ---------------------------------------------------------------------------- the command


def ray_main(args: argparse.Namespace) -> int:
    """`hpo.run --backend ray`: check everything, connect, then tune. Returns the exit code."""
    signal.signal(signal.SIGTERM, _sigterm_as_sigint)  # Tune stops cleanly on SIGINT only
    # the driver sends the heartbeats itself (Driver.heartbeat)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    started = time.time()
    try:
        spec, opts = _check(args)
        _connect(opts)
        study, wargs = run._prepare(args)
    except (HPOError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        _disconnect()
        return 2
    except KeyboardInterrupt:
        _disconnect()
        return 130
    try:
        return _tune(args, spec, opts, study, wargs, started)
    finally:
        _disconnect()


def _check(args: argparse.Namespace) -> tuple[StudySpec, RayOptions]:
    """Every flag and the study, before anything is started or stored."""
    if args.workers != 1:
        raise HPOError(
            "--workers is for the Optuna backend; Ray runs trials side by side by itself "
            "(see --cpus-per-trial, --gpus-per-trial, --max-concurrent)"
        )
    if args.scheduler and args.pruner:
        raise HPOError(
            "--pruner and --scheduler both say how to stop trials early; "
            "with --backend ray give --scheduler"
        )
    sets = parse_sets(args.set)
    if args.device:
        sets["train.device"] = args.device
    spec = load_study_spec(args.study, sets=sets)
    cfg = spec.train_config(sets)
    scheduler = args.scheduler or spec.ray.scheduler
    scheduler = scheduler or PRUNER_TO_SCHEDULER[args.pruner or spec.pruner.name]
    if scheduler not in SCHEDULERS:
        raise HPOError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, but got {scheduler!r}")
    cpu = spec.ray.resources.cpu if args.cpus_per_trial is None else args.cpus_per_trial
    gpu = spec.ray.resources.gpu if args.gpus_per_trial is None else args.gpus_per_trial
    if cpu <= 0:
        raise HPOError(f"--cpus-per-trial must be positive, but got {cpu}")
    if gpu < 0 or (gpu > 1 and gpu != int(gpu)):
        raise HPOError(
            f"--gpus-per-trial must be a fraction of one GPU or a whole number, but got {gpu}"
        )
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise HPOError(f"--max-concurrent must be at least 1, but got {args.max_concurrent}")
    min_resource = spec.pruner.min_resource or cfg.train.eval_interval
    if scheduler in ("asha", "hyperband", "median") and min_resource >= cfg.train.max_steps:
        raise HPOError(
            f"--scheduler {scheduler} needs evaluations before train.max_steps, but the first "
            f"one is at step {min_resource} of {cfg.train.max_steps}"
        )
    mutations: tuple[str, ...] = ()
    if scheduler in PBT_SCHEDULERS:
        mutations = pbt_mutations(spec, sets, scheduler)
    storage_path = args.ray_storage or str((runs_dir() / "ray").resolve())
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())
    return spec, RayOptions(
        address=args.address,
        scheduler=scheduler,
        cpu=cpu,
        gpu=gpu,
        max_concurrent=args.max_concurrent,
        storage_path=storage_path,
        mutations=mutations,
    )


def _connect(opts: RayOptions) -> None:
    """Start a local Ray, or join a cluster. HPOError when the cluster cannot be reached."""
    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}  # relative paths (corpus, cache) mean the same there
    env.update({k: os.environ[k] for k in PASS_ENV if k in os.environ})
    address = opts.address
    if address and address != "auto":
        if address.startswith("ray://"):
            try:
                import grpc  # noqa: F401  (Ray Client needs it)
            except ImportError:
                raise HPOError(
                    f"--address {address} uses Ray Client, which needs "
                    "`pip install 'ray[client]'`; or run hpo on the head node with --address auto"
                ) from None
        _check_reachable(address)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner: hpo prints its own
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # hpo stores the results
    # checkpoints at every evaluation are the point here, not a bottleneck worth a warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's default (token auth on a local cluster) stands; its notice about it goes
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    # with the loggers off, the end-of-run analysis finds no result files: hpo has them
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    Timing.init_start = time.time()
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            logging_config=ray.LoggingConfig(log_level="WARNING"),  # workers: no line per report
            runtime_env={"env_vars": env},
        )
    except ConnectionError as e:
        raise HPOError(f"cannot connect to Ray at --address {address}: {e}") from None
    Timing.init_end = time.time()
    need = f"{opts.cpu:g} CPU" + (f" and {opts.gpu:g} GPU" if opts.gpu else "")
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0) >= opts.cpu and n.get("GPU", 0) >= opts.gpu for n in nodes):
        have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
        raise HPOError(f"no node of the Ray cluster has {need} for a trial (nodes: {have})")


def _check_reachable(address: str) -> None:
    """ray.init retries an unreachable address for minutes; say so in seconds instead."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise HPOError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, but got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise HPOError(
            f"cannot reach the Ray cluster at {address}: {e.strerror or e} "
            "(is `ray start --head` running there, and the port open?)"
        ) from None


def _disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()


def _sigterm_as_sigint(signum: int, frame: Any) -> None:
    os.kill(os.getpid(), signal.SIGINT)


# ---------------------------------------------------------------------------- tuning


def _tune(
    args: argparse.Namespace,
    spec: StudySpec,
    opts: RayOptions,
    study: optuna.Study,
    wargs: run.WorkerArgs,
    started: float,
) -> int:
    metric, direction = spec.objective.metric, spec.objective.direction
    experiment = _experiment_name(study.study_name)
    path = f"{opts.storage_path.rstrip('/')}/{experiment}"
    restoring = tune.Tuner.can_restore(path)
    if not restoring:
        _fail_leftovers(study)
    setup = TrialSetup(
        spec=spec.to_json(), sets=wargs.sets, threads=max(1, int(opts.cpu)), direction=direction
    )
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in COUNTED for t in trials)
    print(
        f"study {wargs.study_name!r} in {masked(wargs.url)}: {done}/{wargs.target} trials done; "
        f"Ray Tune ({_where(opts)}): {wargs.sampler} + {opts.scheduler}, "
        f"{opts.cpu:g} CPU{f' + {opts.gpu:g} GPU' if opts.gpu else ''} per trial\n"
        f"watch it: optuna-dashboard {wargs.url}",
        file=sys.stderr,
    )
    progress = Progress(wargs.target, trials, metric=metric, enabled=not args.no_progress)
    driver = Driver(
        study,
        metric=metric,
        direction=direction,
        experiment=experiment,
        checkpoint_root=Path(wargs.checkpoint_root),
        keep_all=args.keep_checkpoints,
        progress=progress,
        mutations=opts.mutations,
    )
    Driver.current = driver
    trainable = tune.with_parameters(run_trial, setup=setup)
    code = 0
    try:
        if restoring:
            print(f"restoring the interrupted Ray experiment {path}", file=sys.stderr)
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True)
            tuner.fit()
            code = _after_fit(driver, study, experiment)
        remaining = wargs.target - len(study.get_trials(deepcopy=False, states=IN_PLAY))
        if code == 0 and remaining > 0:
            _remove_experiment(path)
            tuner = _new_tuner(spec, opts, study, wargs, trainable, experiment, remaining, args)
            tuner.fit()
            code = _after_fit(driver, study, experiment)
    except KeyboardInterrupt:
        code = 130
    finally:
        progress.update(study, study.get_trials(deepcopy=False))
        progress.close()
        Driver.current = None
    if code == 0:
        _remove_experiment(path)  # finished: its checkpoints are no longer needed
    if not args.keep_checkpoints:
        clean_checkpoints(study, Path(wargs.checkpoint_root))
    print(summary(study, target=wargs.target, wall_time_s=time.time() - started), file=sys.stderr)
    if driver.first_start is not None and Timing.init_start and Timing.init_end:
        print(
            f"ray: start-up {driver.first_start - Timing.init_start:.1f}s from ray.init to the "
            f"first trial running (ray.init {Timing.init_end - Timing.init_start:.1f}s)",
            file=sys.stderr,
        )
    if code == 130:
        print(
            "interrupted: unfinished trials keep their checkpoints; rerun the same command to "
            "restore the Ray experiment and continue",
            file=sys.stderr,
        )
    return code


def _new_tuner(spec, opts, study, wargs, trainable, experiment, n, args) -> tune.Tuner:
    metric, mode = spec.objective.metric, "min" if spec.objective.direction == "minimize" else "max"
    cfg = spec.train_config(wargs.sets)
    concurrency = opts.max_concurrent or max(1, int(_cluster_slots(opts)))
    scheduler = make_scheduler(opts.scheduler, spec, cfg, mutations=opts.mutations,
                               pruner=wargs.pruner)  # fmt: skip
    sampler = make_sampler(spec, name=wargs.sampler, seed=wargs.seed, n_workers=concurrency,
                           worker=0, n_existing=len(study.trials))  # fmt: skip
    if opts.scheduler in PBT_SCHEDULERS:
        members = ask_members(study, spec, n, sampler, opts, experiment)
        param_space: dict[str, Any] = {
            "hpo_number": tune.grid_search(sorted(members)),  # one trial per member
            **{key: tune.sample_from(Member(members, key)) for key in members[min(members)]},
        }
        search_alg, num_samples = None, 1
    else:
        param_space = {}
        search_alg = StudySearch(
            SpaceFn(spec.search_space),
            metric=metric,
            mode=mode,
            sampler=sampler,
            storage=study._storage,
            study_name=study.study_name,
            experiment=experiment,
        )
        num_samples = n
    resources = {"cpu": opts.cpu, "gpu": opts.gpu} if opts.gpu else {"cpu": opts.cpu}
    record_to = RecordTo(
        url=wargs.url,
        study_name=study.study_name,
        metric=metric,
        direction=spec.objective.direction,
        experiment=experiment,
        checkpoint_root=str(Path(wargs.checkpoint_root).resolve()),
        keep_all=args.keep_checkpoints,
        mutations=opts.mutations,
    )
    pbt = opts.scheduler in PBT_SCHEDULERS
    return tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=opts.max_concurrent,
            time_budget_s=args.timeout,
            # a worker process serves trial after trial (and keeps its tokenized data): a
            # stopped trial's report raises SystemExit, which ends its function at once
            reuse_actors=True,
            trial_dirname_creator=_dirname,
        ),
        run_config=tune.RunConfig(
            name=experiment,
            storage_path=opts.storage_path,
            verbose=0,
            callbacks=[Recorder(record_to)],
            failure_config=tune.FailureConfig(max_failures=spec.ray.max_failures),
            # PBT saves the checkpoint a member already reported; with num_to_keep Ray then
            # deletes it twice and fails the trial. The experiment folder goes when it ends.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if pbt else 2),
        ),
    )


def _after_fit(driver: Driver, study: optuna.Study, experiment: str) -> int:
    """130 when Tune was interrupted: trials of this experiment are left unfinished."""
    unfinished = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get("ray.experiment") == experiment
    ]
    return 130 if unfinished else 0


def _cluster_slots(opts: RayOptions) -> float:
    total = ray.cluster_resources()
    slots = total.get("CPU", 1) / opts.cpu
    if opts.gpu:
        slots = min(slots, total.get("GPU", 0) / opts.gpu)
    return slots


def _where(opts: RayOptions) -> str:
    return f"cluster {opts.address}" if opts.address else "local"


def _experiment_name(study_name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in study_name)


def _dirname(trial: Trial) -> str:
    return f"trial_{trial.config.get('hpo_number', trial.trial_id)}_{trial.trial_id}"


def _remove_experiment(path: str) -> None:
    if "://" not in path:
        shutil.rmtree(path, ignore_errors=True)


def _fail_leftovers(study: optuna.Study) -> None:
    """Trials of an earlier Ray driver that is gone and whose experiment cannot be restored."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("backend") == "ray":
            study._storage.set_trial_user_attr(t._trial_id, "stop_reason", "interrupted")
            study._storage.set_trial_user_attr(
                t._trial_id, "fail_reason", "interrupted: its Ray experiment is gone"
            )
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def ask_members(
    study: optuna.Study,
    spec: StudySpec,
    n: int,
    sampler: optuna.samplers.BaseSampler,
    opts: RayOptions,
    experiment: str,
) -> dict[int, dict[str, Any]]:
    """PBT's starting population, sampled by the study's sampler: one Optuna trial per member."""
    study.sampler = sampler
    bounds = mutation_bounds(spec, opts.mutations)
    members = {}
    for _ in range(n):
        trial = study.ask()
        overrides = search_spaces.suggest(trial, spec.search_space)
        _start_attrs(trial, overrides, experiment)
        start = spec.train_config().with_overrides(overrides)
        members[trial.number] = {
            "overrides": overrides,
            **starting_values(start, bounds, pb2=opts.scheduler == "pb2"),
        }
    return members


def _start_attrs(trial: optuna.Trial, overrides: dict[str, Any], experiment: str) -> None:
    for key, value in overrides.items():  # derived values: what the trainer really got
        if key not in trial.params:
            trial.set_user_attr(key, value)
    trial.set_user_attr("backend", "ray")
    trial.set_user_attr("ray.experiment", experiment)


# ---------------------------------------------------------------------------- search


class SpaceFn:
    """The study's define-by-run space, for Ray's OptunaSearch (picklable: Tune saves it)."""

    def __init__(self, spaces: dict[str, dict[str, Any] | None]) -> None:
        self.spaces = spaces

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        return {"overrides": search_spaces.suggest(trial, self.spaces)}


class StudySearch(OptunaSearch):
    """Ray's Optuna searcher on the study's own storage, sampler and space.

    It asks; the Recorder reports and tells (with the trainer's step, the right state and the
    user attrs), since the searcher would see neither the step nor why a trial ended.
    """

    def __init__(self, space: SpaceFn, *, experiment: str, **kwargs: Any) -> None:
        super().__init__(space=space, **kwargs)
        self.experiment = experiment

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        trial = self._ot_trials[trial_id]
        _start_attrs(trial, config["overrides"], self.experiment)
        return {"hpo_number": trial.number, "overrides": config["overrides"]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # the Recorder stores it

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self._completed_trials.add(trial_id)  # the Recorder tells the study


# ---------------------------------------------------------------------------- the trial


_DATA: dict[str, Data] = {}  # tokenized splits, per worker process


def trial_config(config: dict[str, Any], spec: StudySpec, sets: dict[str, Any]) -> TrainConfig:
    """Study settings <- the trial's overrides <- PBT's current values <- --set."""
    current = perturbed(config)
    cfg = spec.train_config().with_overrides(config["overrides"]).with_overrides(current)
    return cfg.with_overrides(sets)


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """One Ray trial: train with the trial's config, report every evaluation with a checkpoint.

    Restored (a retry after a crash, or PBT copying a better member): continue from the
    checkpoint Ray hands over, with this trial's current config.
    """
    torch.set_num_threads(setup.threads)
    me = tune.get_context().get_trial_id()
    spec = StudySpec(**setup.spec)
    metric = spec.objective.metric
    cfg = trial_config(config, spec, setup.sets)
    key = repr((cfg.data, cfg.model.block_size))
    if key not in _DATA:
        _DATA[key] = load_data(cfg.data, block_size=cfg.model.block_size)
    data = _DATA[key]
    work = Path(tune.get_context().get_trial_dir()) / "hpo-checkpoint"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    origin = {"trial_id": "", "step": 0}
    restored = tune.get_checkpoint()
    if restored is not None:
        restored.to_directory(str(work))
        origin = json.loads((work / ORIGIN).read_text())
    static = {
        "hpo/segment": uuid.uuid4().hex[:12],  # one per start of this function
        "hpo/restored_from": origin["trial_id"],  # whose checkpoint: this trial's, or a donor's
        "hpo/restored_step": origin["step"],
        "hpo/node_id": ray.get_runtime_context().get_node_id(),
        "hpo/pid": os.getpid(),
        "hpo/max_steps": cfg.train.max_steps,
        "hpo/params": _n_params(cfg, data),
    }
    device, seeds = str(resolve_device(cfg.train.device)), resolve_seeds(cfg)
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size
    t0, clock = time.perf_counter(), {"step": origin["step"], "tokens": 0.0, "seconds": 0.0}
    last: dict[str, Any] = {}

    def report(step: int, metrics: dict[str, float]) -> None:
        (work / ORIGIN).write_text(json.dumps({"trial_id": me, "step": step}))
        tokens = (step - clock["step"]) * tokens_per_step
        clock.update(step=step, tokens=clock["tokens"] + tokens)
        clock["seconds"] += tokens / max(metrics["system/tokens_per_s"], 1e-9)
        so_far = TrainResult(
            best_val_loss=math.nan, best_step=0, metrics=metrics, steps=step,
            tokens=step * tokens_per_step, wall_time_s=time.perf_counter() - t0,
            tokens_per_s=clock["tokens"] / max(clock["seconds"], 1e-9),
            n_params=static["hpo/params"], stop_reason="running", data=data.info(), seeds=seeds,
            device=device, resumed_from=origin["step"],
        )  # fmt: skip
        last.clear()
        last.update(_row(step, metrics, so_far, cfg, static))
        tune.report(dict(last), checkpoint=tune.Checkpoint.from_directory(str(work)))

    worst = math.inf if setup.direction == "minimize" else -math.inf
    try:
        result = train(cfg, report=report, checkpoint_dir=work, resume=True, allow_changes=True,
                       data=data)  # fmt: skip
    except (DivergedError, OutOfMemoryError, TrainerError, UsageError) as e:
        shutil.rmtree(work, ignore_errors=True)
        # deterministic: retrying would fail again, so the trial ends here as FAIL
        reason = {DivergedError: "diverged", OutOfMemoryError: "out_of_memory"}.get(type(e))
        tune.report(
            {**static, **last, metric: worst, "step": getattr(e, "step", last.get("step", 0)),
             "hpo/failed": reason or "error", "hpo/fail_reason": str(e)}
        )  # fmt: skip
        return
    except BaseException:  # stopped or paused by the scheduler (SystemExit), or a crash
        shutil.rmtree(work, ignore_errors=True)  # what matters was reported with a checkpoint
        raise
    # restored at its last step (PBT may exploit there), nothing was left to train: the
    # checkpoint's last evaluation stands
    metrics = result.metrics or {
        k: v for k, v in (result.history or [{}])[-1].items() if k != "step"
    }
    row = _row(result.steps, metrics or {metric: worst}, result, cfg, static)
    tune.report({**row, "hpo/done": 1, "hpo/stop_reason": result.stop_reason})
    shutil.rmtree(work, ignore_errors=True)


def _row(step, metrics, result: TrainResult, cfg: TrainConfig, static) -> dict[str, Any]:
    return {
        **static,
        **metrics,  # val/loss, val/bpb, train/loss, lr, system/...: the schedulers read the metric
        "step": step,
        "hpo/metrics": json.dumps(metrics),
        "hpo/tokens_per_s": round(result.tokens_per_s, 1),
        "hpo/wall_time_s": round(result.wall_time_s, 3),
        "hpo/manifest": json.dumps(trial_manifest(cfg, result), default=str),
    }


def _n_params(cfg: TrainConfig, data: Data) -> int:
    """Parameter count without allocating the weights (a meta-device model)."""
    try:
        with torch.device("meta"):
            return count_params(build_model(cfg.model, data.vocab_size))
    except Exception:  # a model family that cannot be built on the meta device
        return 0


# ---------------------------------------------------------------------------- recording


class Driver:
    """Turns Ray's trial events into Optuna trial records (the driver's side of a run)."""

    current: Driver | None = None  # hpo.run's, in its own process

    def __init__(self, study, *, metric, direction, experiment, checkpoint_root, keep_all,
                 progress, mutations) -> None:  # fmt: skip
        self.study, self.storage = study, study._storage
        self.metric, self.minimize = metric, direction == "minimize"
        self.experiment = experiment
        self.checkpoint_root, self.keep_all = checkpoint_root, keep_all
        self.progress, self.mutations = progress, mutations
        self.numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self.ids: dict[int, int] = {}  # Optuna trial number -> storage trial id
        self.steps: dict[int, dict[int, float]] = {}  # values stored per trial and step
        self.segments: dict[int, set[str]] = {}
        self.started: set[int] = set()
        self.beat_at = 0.0
        self.first_start: float | None = None

    def number(self, trial: Trial) -> int:
        """An exploited PBT member carries its donor's config, hpo_number included: what the
        trial was first started as (stored as ray.trial_id, for restores) tells who it is."""
        known = self._number_of(trial.trial_id)
        if known is None:
            known = self.numbers[trial.trial_id] = int(trial.config["hpo_number"])
        return known

    def _number_of(self, ray_trial_id: str) -> int | None:
        if ray_trial_id not in self.numbers:
            for t in self.study.get_trials(deepcopy=False):
                if t.user_attrs.get("ray.trial_id") == ray_trial_id:
                    self.numbers[ray_trial_id] = t.number
        return self.numbers.get(ray_trial_id)

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(self._id(number))

    def _id(self, number: int) -> int:
        if number not in self.ids:
            self.ids[number] = self.storage.get_trial_id_from_study_id_trial_number(
                self.study._study_id, number
            )
        return self.ids[number]

    def _running(self, number: int) -> optuna.trial.FrozenTrial | None:
        t = self.storage.get_trial(self._id(number))
        return t if t.state == TrialState.RUNNING else None

    def _set(self, number: int, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(self._id(number), key, value)

    def start(self, trial: Trial) -> None:
        if self.first_start is None:
            self.first_start = time.time()
        n = self.number(trial)
        if n not in self.started and self._running(n) is not None:
            self.started.add(n)
            self._set(n, "ray.trial_id", trial.trial_id)
            self._set(n, "backend", "ray")
            self._set(n, "ray.experiment", self.experiment)
            self.storage.record_heartbeat(self._id(n))

    def result(self, trial: Trial, result: dict[str, Any]) -> None:
        n = self.number(trial)
        t = self._running(n)
        if t is None or "hpo/failed" in result or "step" not in result:
            return
        step = int(result["step"])
        seen = self.steps.setdefault(n, dict(t.intermediate_values))
        if step not in seen and not result.get("hpo/done"):
            value = float(result[self.metric])
            self.storage.set_trial_intermediate_value(self._id(n), step, value)
            seen[step] = value
        node = result.get("hpo/node_id")
        nodes = t.user_attrs.get("ray.nodes", [])
        if node and node not in nodes:
            self._set(n, "ray.nodes", [*nodes, node])
            self._set(n, "ray.node_id", nodes[0] if nodes else node)
        segment = result.get("hpo/segment")
        if segment and segment not in self.segments.setdefault(n, set()):
            self.segments[n].add(segment)
            self._new_segment(n, t, trial, result)

    def _new_segment(self, n: int, t, trial: Trial, result: dict[str, Any]) -> None:
        """The trial function (re)started: a fresh start, a retry or a PBT exploit."""
        source, at = result.get("hpo/restored_from"), int(result.get("hpo/restored_step", 0))
        self._set(n, "ray.pid", result.get("hpo/pid"))
        if source and source != trial.trial_id:  # PBT copied a better member's state
            donor = self._number_of(source)
            own = t.intermediate_values
            donor_values = {} if donor is None else self._frozen(donor).intermediate_values
            event = {
                "step": at,  # of the donor's checkpoint, where this member goes on from
                "donor": donor,
                "donor_value": donor_values.get(at),  # the donor's evaluation there
                "own_value": own[max(own)] if own else None,  # this member's last, before
                "value_after": None,  # its first evaluation after (none if nothing was left)
                "step_after": None,
            }
            if int(result["step"]) > at:
                event.update(value_after=float(result[self.metric]), step_after=int(result["step"]))
            self._set(n, "pbt.lineage", [*t.user_attrs.get("pbt.lineage", []), event])
        elif source:  # its own checkpoint: a retry after a crash, or a restored experiment
            self._set(n, "ray.resumed_at", [*t.user_attrs.get("ray.resumed_at", []), at])
        if self.mutations:
            values = current_values(trial.config, self.mutations)
            schedule = t.user_attrs.get("pbt.schedule", [])
            if not schedule or {k: schedule[-1][k] for k in values} != values:
                self._set(n, "pbt.schedule", [*schedule, {"step": at, **values}])

    def finish(self, trial: Trial, error: str | None = None) -> None:
        n = self.number(trial)
        t = self._running(n)
        if t is None:
            return
        r = trial.last_result or {}
        if error is not None or "hpo/failed" in r:
            self._set(n, "stop_reason", "error" if error else r["hpo/failed"])
            self._set(n, "fail_reason", error or r.get("hpo/fail_reason", "failed"))
            if "step" in r:
                self._set(n, "steps", int(r["step"]))
            self.study.tell(n, state=TrialState.FAIL, skip_if_finished=True)
            return self._update_progress()
        step = int(r.get("step", 0))
        max_steps = int(r.get("hpo/max_steps", step or 1))
        done = bool(r.get("hpo/done")) or step >= max_steps
        values = self.steps.get(n) or dict(self.storage.get_trial(self._id(n)).intermediate_values)
        pick = min if self.minimize else max
        best_step = pick(values, key=values.__getitem__) if values else 0
        attrs = {
            "stop_reason": r.get("hpo/stop_reason", "max_steps") if done else "pruned",
            "steps": step,
            "max_steps": max_steps,
            "best_step": best_step,
            "tokens_per_s": r.get("hpo/tokens_per_s", 0.0),
            "params": r.get("hpo/params", 0),
            "wall_time_s": r.get("hpo/wall_time_s", 0.0),
            "metrics": json.loads(r.get("hpo/metrics", "{}")),
            "manifest": json.loads(r["hpo/manifest"]) if "hpo/manifest" in r else None,
        }
        if attrs["manifest"] is not None:  # it was made while the trial ran
            for key in ("steps", "stop_reason"):
                if key in attrs["manifest"]:
                    attrs["manifest"][key] = attrs[key]
        for key, value in attrs.items():
            if value is not None:
                self._set(n, key, value)
        if not values:
            self._set(n, "fail_reason", "the trial ended before its first evaluation")
            self.study.tell(n, state=TrialState.FAIL, skip_if_finished=True)
        elif done:
            self.study.tell(n, values[best_step], skip_if_finished=True)
            self._keep_checkpoint(trial, n)
        else:
            self.study.tell(n, state=TrialState.PRUNED, skip_if_finished=True)
        self._update_progress()

    def _keep_checkpoint(self, trial: Trial, n: int) -> None:
        """The best trial's best.pt where the Optuna backend keeps it (hpo.validate, users)."""
        try:
            best = self.study.best_trial.number
        except ValueError:
            return
        checkpoint = trial.checkpoint
        if checkpoint is None or (n != best and not self.keep_all):
            return
        dest = self.checkpoint_root / f"trial_{n}"
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint.to_directory(tmp)
            dest.mkdir(parents=True, exist_ok=True)
            for name in ("best.pt", "last.pt"):
                if (Path(tmp) / name).exists():
                    shutil.copy2(Path(tmp) / name, dest / name)

    def heartbeat(self) -> None:
        """Live trials send heartbeats, so `fail_stale_trials` tells a dead driver's trials."""
        if time.time() - self.beat_at < HEARTBEAT_INTERVAL_S:
            return
        self.beat_at = time.time()
        for n in self.started:
            if self._running(n) is not None:
                self.storage.record_heartbeat(self._id(n))

    def _update_progress(self) -> None:
        if self.progress is not None:
            self.progress.update(self.study, self.study.get_trials(deepcopy=False))


@dataclass(frozen=True)
class RecordTo:
    """Where a Recorder that runs outside hpo.run's process records (Ray Client runs Tune's
    loop on the head node): enough to open the study there."""

    url: str
    study_name: str
    metric: str
    direction: str
    experiment: str
    checkpoint_root: str
    keep_all: bool
    mutations: tuple[str, ...]


class Recorder(tune.Callback):
    """Tune's callbacks on the driver, forwarded to a Driver: hpo.run's own (Driver.current,
    which also restored experiments use, since Tuner.restore unpickles its callbacks), else one
    opened from `to` where Tune's loop runs."""

    def __init__(self, to: RecordTo) -> None:
        self.to = to
        self._own: Driver | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"to": self.to, "_own": None}

    def driver(self) -> Driver:
        if Driver.current is not None:
            return Driver.current
        if self._own is None:
            study = optuna.load_study(
                study_name=self.to.study_name, storage=open_storage(self.to.url)
            )
            self._own = Driver(
                study, metric=self.to.metric, direction=self.to.direction,
                experiment=self.to.experiment, checkpoint_root=Path(self.to.checkpoint_root),
                keep_all=self.to.keep_all, progress=None, mutations=self.to.mutations,
            )  # fmt: skip
        return self._own

    def on_trial_start(self, iteration, trials, trial, **info):
        self.driver().start(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.driver().result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.driver().finish(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.driver().finish(trial, error=_error_message(trial))

    def on_step(self, iteration, trials, **info):
        self.driver().heartbeat()


def _error_message(trial: Trial) -> str:
    """The last line of the trial's traceback (Ray keeps the whole in error.txt)."""
    path = getattr(trial, "error_file", None)
    try:
        lines = [x for x in Path(path).read_text().splitlines() if x.strip()] if path else []
    except OSError:
        lines = []
    tail = lines[-1].strip() if lines else "the Ray trial failed"
    return f"{tail} (after {trial.run_metadata.num_failures} attempt(s); see {path})"
