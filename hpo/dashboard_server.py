"""optuna-dashboard on hpo's storage and artifact store: the core of python -m hpo.dashboard (its
door: hpo.cli.dashboard). Everything that can be refused is checked before the server starts."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass

from hpo.artifacts import artifact_store
from hpo.errors import UsageError
from hpo.storage import load_existing_study, masked, open_storage, storage_url, stored_name


@dataclass(frozen=True)
class DashboardRequest:
    """What `hpo.dashboard` is asked for: each field means its flag."""

    study: str | None = None  # None: the list of studies
    study_name: str | None = None
    storage: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080


def serve(request: DashboardRequest) -> int:
    """Serve optuna-dashboard on the storage (and hpo's artifact store) until interrupted.
    UsageError for a storage, study or port that cannot be used, before anything listens."""
    url = storage_url(request.storage)
    storage = open_storage(url, create=False)
    # --study: print that study's own page (else the list of studies)
    name = stored_name(request.study, request.study_name)
    page = ""
    if name:
        study = load_existing_study(name, url)  # refused in one line when there is none
        page = f"dashboard/studies/{storage.get_study_id_from_name(study.study_name)}"
    _check_port(request.host, request.port)
    import optuna_dashboard  # imported late: only the server needs it

    print(
        f"optuna-dashboard on {masked(url)}: http://{request.host}:{request.port}/{page}",
        file=sys.stderr,
        flush=True,
    )
    optuna_dashboard.run_server(
        storage, host=request.host, port=request.port, artifact_store=artifact_store()
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
