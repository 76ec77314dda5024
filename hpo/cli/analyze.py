"""What mattered in a study: python -m hpo.analyze --study lr_sweep

Prints importance with intervals (each parameter scored within its condition), the conditions
compared, range warnings (in study-YAML keys, inside each bound's domain), sensitivity and
pruning statistics; writes plots (HTML + PNG), summary.md and analysis.json under
runs/<study>/report/, and attaches the plots and summary to the study (artifacts and a note) so
optuna-dashboard shows them. Under pruning, trials are compared at a common rung, pruned ones
included (--values final: completed trials only); the summary says which. The analysis itself:
hpo.analysis.
"""

from __future__ import annotations

import argparse
import sys
import time

from hpo.analysis.analyze import VALUES, AnalyzeRequest, analyze_study
from hpo.analysis.importance import EVALUATORS, N_RESAMPLES
from hpo.cli.command import run_cli
from hpo.cli.flags import add_storage_flag, add_study_flags


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpo.analyze", description=__doc__.split("\n")[0])
    add_study_flags(p)
    add_storage_flag(p)
    p.add_argument("--evaluator", choices=EVALUATORS, default="fanova")
    p.add_argument(
        "--resamples",
        type=int,
        default=N_RESAMPLES,
        help=f"bootstrap resamples for importance intervals (default: {N_RESAMPLES})",
    )
    p.add_argument(
        "--values",
        choices=VALUES,
        default="rung",
        help="what to compare: each trial at a common rung, pruned ones included, when pruning "
        "left one (default), or the final values of completed trials only",
    )
    p.add_argument("--out", help="report folder (default: runs/<study>/report)")
    p.add_argument("--no-upload", action="store_true", help="do not attach the report to the study")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _analyze(args))


def _analyze(args: argparse.Namespace) -> int:
    start = time.time()
    done = analyze_study(
        AnalyzeRequest(
            study=args.study,
            study_name=args.study_name,
            storage=args.storage,
            evaluator=args.evaluator,
            resamples=args.resamples,
            values=args.values,
            out=args.out,
            upload=not args.no_upload,
        ),
        show=print,
    )
    if done.attached is not None:
        print(
            f"attached {done.attached} files and a note to study {done.study_name!r}",
            file=sys.stderr,
        )
    print(f"report in {done.out} ({time.time() - start:.1f}s)", file=sys.stderr)
    if not done.result["best"]:
        print(f"no trial of study {done.study_name!r} has completed yet", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
