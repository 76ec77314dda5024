"""Tune a study: python -m hpo.run --study lr_sweep --trials 100

--trials is the total: a rerun of the same command resumes the study and tops it up to that
many finished (complete or pruned) trials. --workers N runs N processes on this machine on one
study; workers on other machines join with python -m hpo.worker. This module only reads the
flags; the service itself is hpo.session.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hpo.cli.command import INTERRUPTED_MESSAGE, run_cli
from hpo.cli.flags import add_storage_flag, add_study_flags
from hpo.errors import UsageError
from hpo.session import RunRequest, load_request, open_study, run_study
from hpo.study_spec import PRUNERS, SAMPLERS, SCHEDULERS, TRACKERS
from hpo.trial_loop import quiet_optuna

# flags only --backend ray reads
RAY_ONLY = (
    *("address", "scheduler", "cpus_per_trial", "gpus_per_trial", "max_concurrent"),
    "ray_storage",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hpo.run",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_argument_group("what to tune")
    add_study_flags(what, default="lr_sweep")
    what.add_argument(
        "--trials", type=int, help="total finished trials to reach (default: the study's)"
    )
    what.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    what.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a trainer setting (repeatable)",
    )
    what.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda", "mps"],
        help="shorthand for --set train.device=...",
    )
    how = p.add_argument_group("how to search")
    how.add_argument("--sampler", choices=SAMPLERS, help="default: the study's (tpe)")
    how.add_argument("--pruner", choices=PRUNERS, help="default: the study's (lr_sweep: sha)")
    how.add_argument("--seed", type=int, help="sampler seed (default: the study's, 0)")
    how.add_argument(
        "--workers",
        type=int,
        help="worker processes on this machine (default: 1, or one per visible GPU)",
    )
    how.add_argument(
        "--trials-per-gpu",
        type=int,
        metavar="K",
        help="pack K trials on each GPU (K workers per GPU; --backend ray: 1/K GPU per trial)",
    )
    how.add_argument(
        "--noise-seeds",
        type=int,
        metavar="K",
        help="train each incumbent again with K more seeds (within 15%% of the compute), pick "
        "the winner on its mean; default: the study's noise.seeds (0: off)",
    )
    how.add_argument(
        "--stop-below-noise",
        action=argparse.BooleanOptionalAction,
        help="end the study once its gains fall below the seed noise (needs --noise-seeds); "
        "default: the study's noise.stop_below_noise",
    )
    where = p.add_argument_group("where results go")
    add_storage_flag(where)
    where.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every trial's checkpoint, not just the best",
    )
    where.add_argument("--no-progress", action="store_true", help="no live progress bar")
    where.add_argument(
        "--verbose", action="store_true", help="Optuna's log too (a failed trial's traceback)"
    )
    where.add_argument(
        "--tracking",
        choices=TRACKERS,
        help="also log each trial to W&B (offline without an API key) or MLflow "
        "(default: the study's, none)",
    )
    where.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db); "
        "W&B: folder for its run files (default: $WANDB_DIR or runs/)",
    )
    again = p.add_argument_group("reproduce a trial")
    again.add_argument(
        "--replay",
        type=int,
        metavar="TRIAL",
        help="rerun trial TRIAL of --study from its manifest and compare its metrics "
        "(exit 0: they match, 1: they differ)",
    )
    again.add_argument(
        "--tolerance",
        type=float,
        help="relative difference allowed by --replay (default: 0 where the replay can be "
        "bit-exact, else 1e-3)",
    )
    ray = p.add_argument_group("Ray Tune backend (hpo/raytune/)")
    ray.add_argument(
        "--backend",
        choices=("optuna", "ray"),
        default="optuna",
        help="who runs the trials (default: optuna)",
    )
    ray.add_argument(
        "--address",
        help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start a local Ray)",
    )
    ray.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        help="default: the study's ray.scheduler, else the pruner's counterpart",
    )
    ray.add_argument("--cpus-per-trial", type=float, help="default: the study's (1)")
    ray.add_argument(
        "--gpus-per-trial",
        type=float,
        help="default: the study's (0); 0.25 packs 4 trials on a GPU",
    )
    ray.add_argument("--max-concurrent", type=int, help="default: as many as resources allow")
    ray.add_argument(
        "--ray-storage",
        metavar="PATH_OR_URI",
        help="Ray's experiment state and checkpoints (default: runs/ray; "
        "on several machines a shared folder or s3://...)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _run(args), interrupted=INTERRUPTED_MESSAGE)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_optuna(args.verbose)
    if args.replay is not None:
        from hpo.validation.replay import ReplayRequest, replay

        return replay(
            ReplayRequest(
                study=args.study,
                study_name=args.study_name,
                storage=args.storage,
                trial=args.replay,
                device=args.device,
                tolerance=args.tolerance,
            )
        )
    request = RunRequest(
        study=args.study,
        study_name=args.study_name,
        trials=args.trials,
        timeout=args.timeout,
        sets=tuple(args.set),
        device=args.device,
        sampler=args.sampler,
        pruner=args.pruner,
        seed=args.seed,
        noise_seeds=args.noise_seeds,
        stop_below_noise=args.stop_below_noise,
        workers=args.workers,
        trials_per_gpu=args.trials_per_gpu,
        storage=args.storage,
        tracking=args.tracking,
        tracking_uri=args.tracking_uri,
        verbose=args.verbose,
    )
    if args.backend == "ray":
        from hpo.raytune import RayRequest, ray_main  # imports Ray only when asked for

        ray = RayRequest(
            address=args.address,
            scheduler=args.scheduler,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            max_concurrent=args.max_concurrent,
            ray_storage=args.ray_storage,
            progress=not args.no_progress,
            keep_checkpoints=args.keep_checkpoints,
        )
        return ray_main(request, ray)
    ray_only = [f"--{k.replace('_', '-')}" for k in RAY_ONLY if getattr(args, k) is not None]
    if ray_only:
        raise UsageError(f"{ray_only[0]} needs --backend ray")
    study, plan = open_study(request, load_request(request))
    return run_study(
        study, plan, progress=not args.no_progress, keep_checkpoints=args.keep_checkpoints
    )


if __name__ == "__main__":
    sys.exit(main())
