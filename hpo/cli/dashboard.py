"""Watch studies in the browser: optuna-dashboard on hpo's storage and artifact store.

    python -m hpo.dashboard [--study NAME] [--storage URL] [--host 127.0.0.1] [--port 8080]

Plain `optuna-dashboard <storage URL>` works on the same storage too; this command also serves
the plots and reports that hpo.analyze uploads, and prints the study's own page.
"""

from __future__ import annotations

import argparse
import socket
import sys

from hpo.artifacts import artifact_store
from hpo.cli.command import run_cli
from hpo.cli.flags import add_storage_flag, add_study_flags
from hpo.errors import UsageError
from hpo.storage import load_existing_study, masked, open_storage, storage_url, stored_name


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
    url = storage_url(args.storage)
    storage = open_storage(url, create=False)
    # --study: print that study's own page (else the list of studies)
    name = stored_name(args.study, args.study_name)
    page = ""
    if name:
        study = load_existing_study(name, url)  # refused in one line when there is none
        page = f"dashboard/studies/{storage.get_study_id_from_name(study.study_name)}"
    _check_port(args.host, args.port)
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


def _check_port(host: str, port: int) -> None:
    """Bind the address once before the server does, so that a port in use is one line
    before anything says "listening"."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind((host, port))
        except OSError as e:
            raise UsageError(
                f"cannot listen on {host}:{port} ({e.strerror}): pick another --port"
            ) from None


if __name__ == "__main__":
    sys.exit(main())
