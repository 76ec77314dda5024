"""Connect to Ray (a local one, or a cluster) and disconnect; fail fast where it cannot."""

from __future__ import annotations

import logging
import os
import socket
import time

import ray

from hpo.errors import UsageError
from hpo.raytune.options import RayOptions

PASS_ENV = ("HPO_CACHE", "HF_HOME", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")  # to workers
CONNECT_TIMEOUT_S = 5.0
# The head's proxy starts a Ray Client server per connection; on a loaded machine that server
# has died at start-up (its gRPC poller: "epoll_wait error: Bad file descriptor", seen twice in
# CI) and the next connection's server started fine: one more try, then the error stands.
CLIENT_ATTEMPTS = 2
CLIENT_SERVER_FAILED = "Starting Ray client server failed"
log = logging.getLogger(__name__)


def connect(opts: RayOptions) -> tuple[float, float]:
    """Start a local Ray, or join a cluster. Returns when ray.init started and ended (Ray's
    start-up cost, for the summary). UsageError when the cluster cannot be reached."""
    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}  # relative paths (corpus, cache) mean the same there
    env.update({k: os.environ[k] for k in PASS_ENV if k in os.environ})
    address = opts.address
    if address and address != "auto":
        if address.startswith("ray://"):
            try:
                import grpc  # noqa: F401  (Ray Client needs it)
            except ImportError:
                raise UsageError(
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
    init_start = time.time()
    try:
        _init(address, env)
    except ConnectionError as e:
        # a cluster with token auth (RAY_AUTH_MODE=token) makes an unauthenticated Ray Client
        # wait for a reply that never comes: the error is a plain timeout
        hint = (
            "; if the cluster uses token authentication, set RAY_AUTH_MODE=token here too, with "
            "its token in RAY_AUTH_TOKEN or ~/.ray/auth_token"
            if address and address.startswith("ray://")
            else ""
        )
        raise UsageError(f"cannot connect to Ray at --address {address}: {e}{hint}") from None
    init_end = time.time()
    need = f"{opts.cpu:g} CPU" + (f" and {opts.gpu:g} GPU" if opts.gpu else "")
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0) >= opts.cpu and n.get("GPU", 0) >= opts.gpu for n in nodes):
        have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
        raise UsageError(f"no node of the Ray cluster has {need} for a trial (nodes: {have})")
    return init_start, init_end


def _init(address: str | None, env: dict[str, str]) -> None:
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                logging_level=logging.WARNING,
                logging_config=ray.LoggingConfig(
                    log_level="WARNING"
                ),  # workers: no line per report
                runtime_env={"env_vars": env},
            )
            return
        except ConnectionError as e:
            if attempt == CLIENT_ATTEMPTS or CLIENT_SERVER_FAILED not in str(e):
                raise
            log.warning("Ray Client: the cluster's client server did not start; trying again")
            disconnect()


def _check_reachable(address: str) -> None:
    """ray.init retries an unreachable address for minutes; say so in seconds instead."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(
            f"--address must be auto, HOST:PORT or ray://HOST:PORT, but got {address!r}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UsageError(
            f"cannot reach the Ray cluster at {address}: {e.strerror or e} "
            "(is `ray start --head` running there, and the port open?)"
        ) from None


def disconnect() -> None:
    """Shut down the Ray this process started or joined (if any)."""
    if ray.is_initialized():
        ray.shutdown()


def cluster_slots(opts: RayOptions) -> float:
    """How many trials of this size the whole cluster holds at once."""
    total = ray.cluster_resources()
    slots = total.get("CPU", 1) / opts.cpu
    if opts.gpu:
        slots = min(slots, total.get("GPU", 0) / opts.gpu)
    return slots
