"""Prove the winner: python -m hpo.validate --seeds 10 [--study NAME] [--trial N | --top-k K]

Tuning chose the winner on the validation split with one seed. This trains the winner (or the
chosen trials) and the study's baseline with the same N seeds, paired (seed i gives both the
same initialisation and data order), at full budget with no pruning, has the trainable score
each on the test split at its best validation checkpoint (run.scores_test, hpo.seam), and says
whether the difference in the objective's test metric is larger than seed-to-seed noise, in
the study's direction. Each finished seed is stored in the study at once: a killed run resumes
without training a finished seed again. The validation itself: hpo.validation.
"""

from __future__ import annotations

import argparse
import sys

from hpo.cli.command import run_cli
from hpo.cli.flags import add_storage_flag, add_study_flags
from hpo.study_spec import TRACKERS
from hpo.validation.validate import MAX_TIED, ValidateRequest, validate_study


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpo.validate", description=__doc__.split("\n")[0])
    add_study_flags(p)
    add_storage_flag(p)
    p.add_argument(
        "--seeds",
        type=int,
        default=10,
        help="the most paired seeds per config (at least 2; 10 advised); a clear difference "
        "stops early (see --fixed-seeds)",
    )
    p.add_argument(
        "--fixed-seeds",
        action="store_true",
        help="run exactly --seeds seeds, with no look before the last (the sequential test "
        "spends some power on its early looks)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, help="validate this trial instead of the best")
    which.add_argument(
        "--top-k",
        type=int,
        help="validate the K best trials (default: the best, and the trials tied with it "
        f"within the seed noise the study measured, up to {MAX_TIED})",
    )
    p.add_argument("--workers", type=int, default=1, help="seeds trained side by side")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--tracking",
        choices=TRACKERS,
        help="also log each (config, seed) run to W&B or MLflow (default: the study's, none)",
    )
    p.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow tracking URI, or W&B's folder for run files"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    request = ValidateRequest(
        study=args.study,
        study_name=args.study_name,
        storage=args.storage,
        seeds=args.seeds,
        fixed_seeds=args.fixed_seeds,
        trial=args.trial,
        top_k=args.top_k,
        workers=args.workers,
        progress=not args.no_progress,
        tracking=args.tracking,
        tracking_uri=args.tracking_uri,
    )
    interrupted = "interrupted: finished seeds are stored; rerun the same command to continue"
    return run_cli(lambda: _validate(request), interrupted=interrupted)


def _validate(request: ValidateRequest) -> int:
    validate_study(request)
    return 0


if __name__ == "__main__":
    sys.exit(main())
