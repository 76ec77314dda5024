"""Watch studies in the browser: optuna-dashboard on hpo's storage and artifact store.

    python -m hpo.dashboard [--study NAME] [--storage URL] [--host 127.0.0.1] [--port 8080]

Plain `optuna-dashboard <storage URL>` works on the same storage too; this command also serves
the plots and reports that hpo.analyze uploads, and prints the study's own page.
"""

from __future__ import annotations

import argparse
import sys

from hpo.artifacts import artifact_store
from hpo.errors import HPOError
from hpo.storage import load_existing_study, masked, open_storage, storage_url


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpo.dashboard", description=__doc__.split("\n")[0])
    p.add_argument("--study", help="print the URL of this study's page")
    p.add_argument(
        "--storage", help="database URL (default: $HPO_STORAGE or sqlite:///runs/hpo.db)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: localhost only)"
    )
    p.add_argument("--port", type=int, default=8080)
    args = p.parse_args(argv)
    try:
        url = storage_url(args.storage)
        storage = open_storage(url)
        page = (
            f"dashboard/studies/{load_existing_study(args.study, url)._study_id}"
            if args.study
            else ""
        )
    except HPOError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import optuna_dashboard  # imported late: only the server needs it

    print(
        f"optuna-dashboard on {masked(url)}: http://{args.host}:{args.port}/{page}",
        file=sys.stderr,
        flush=True,
    )
    optuna_dashboard.run_server(
        storage, host=args.host, port=args.port, artifact_store=artifact_store()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
