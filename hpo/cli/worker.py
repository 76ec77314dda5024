"""Join a running study from any machine: python -m hpo.worker --study NAME --storage URL

Everything a trial needs comes from the study itself, as the `hpo.run` that created it stored
it: the validated spec, the --set overrides, sampler, pruner, seed and the total-trial target.
So a worker needs no study file, only the code and the storage URL. Each worker process gets
its own sampler seed; all of them stop when the study holds its target of finished trials.

Checkpoints go under $HPO_RUNS_DIR (default ./runs): point it at a folder every worker shares
(an NFS mount, the compose file's volume) so that a dead worker's trial resumes elsewhere.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hpo.cli.command import INTERRUPTED_MESSAGE, run_cli
from hpo.cli.flags import add_storage_flag, add_study_flags
from hpo.session import JoinRequest, join_study, run_study
from hpo.storage import stored_name
from hpo.trial_loop import quiet_optuna


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpo.worker", description=__doc__.split("\n")[0])
    add_study_flags(p)
    add_storage_flag(p)
    p.add_argument(
        "--workers",
        type=int,
        help="worker processes on this machine (default: 1, or one per visible GPU)",
    )
    p.add_argument(
        "--trials-per-gpu", type=int, metavar="K", help="pack K trials on each GPU of this machine"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait this long for the study to be created (workers started beside the tuner)",
    )
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--no-progress", action="store_true", help="no live progress bar")
    p.add_argument(
        "--verbose", action="store_true", help="Optuna's log too (a failed trial's traceback)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _join(args), interrupted=INTERRUPTED_MESSAGE)


def _join(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_optuna(args.verbose)
    request = JoinRequest(
        study=stored_name(args.study, args.study_name),
        storage=args.storage,
        workers=args.workers,
        trials_per_gpu=args.trials_per_gpu,
        timeout=args.timeout,
        wait=args.wait,
        verbose=args.verbose,
    )
    study, plan = join_study(request)
    return run_study(study, plan, progress=not args.no_progress)


if __name__ == "__main__":
    sys.exit(main())
