"""Watch studies in the browser: optuna-dashboard on hpo's storage and artifact store.

    python -m hpo.dashboard [--study NAME] [--storage URL] [--host 127.0.0.1] [--port 8080]

Plain `optuna-dashboard <storage URL>` works on the same storage too; this command also serves
the plots and reports that hpo.analyze uploads, and prints the study's own page.
"""

from __future__ import annotations

import argparse
import sys

from hpo.cli.command import run_cli
from hpo.cli.flags import add_storage_flag, add_study_flags
from hpo.dashboard_server import DashboardRequest, serve


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpo.dashboard", description=__doc__.split("\n")[0])
    add_study_flags(p)
    add_storage_flag(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: localhost only)"
    )
    p.add_argument("--port", type=int, default=8080)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _serve(args))


def _serve(args: argparse.Namespace) -> int:
    return serve(
        DashboardRequest(
            study=args.study,
            study_name=args.study_name,
            storage=args.storage,
            host=args.host,
            port=args.port,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
