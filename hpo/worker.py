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
import os
import socket
import sys
import tempfile
import time
import zlib
from pathlib import Path

import optuna
import yaml

from hpo import run
from hpo.errors import HPOError
from hpo.storage import load_existing_study, storage_url
from hpo.tracking import tracking_from_study

WAIT_POLL_S = 2.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpo.worker", description=__doc__.split("\n")[0])
    p.add_argument("--study", required=True, help="the study's name in the storage")
    p.add_argument("--storage", help="database URL (default: $HPO_STORAGE)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait this long for the study to be created (workers started beside the tuner)",
    )
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--no-progress", action="store_true", help="no live progress bar")
    return p


def run_args(study: optuna.Study, url: str, spec_file: Path) -> list[str]:
    """The `hpo.run` command line that continues the study exactly as it was started."""
    attrs, study_name = study.user_attrs, study.study_name
    search = attrs.get("hpo.search", {})
    argv = [
        "--study", str(spec_file), "--study-name", study_name, "--storage", url,
        "--trials", str(attrs["hpo.target"]),
        # a seed offset of its own per machine and process: workers started at the same
        # moment must not sample the same start-up points
        "--worker-offset", str(zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())),
    ]  # fmt: skip
    for flag in ("sampler", "pruner", "seed"):
        if flag in search:
            argv += [f"--{flag}", str(search[flag])]
    for key, value in attrs.get("hpo.sets", {}).items():
        argv += ["--set", f"{key}={value}"]
    tracking = tracking_from_study(study)  # the tracker the study was started with
    if tracking.backend != "none":
        argv += ["--tracking", tracking.backend]
        argv += ["--tracking-uri", tracking.uri] if tracking.uri else []
    return argv


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    url = storage_url(args.storage)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            study = load_existing_study(args.study, url)
            if "hpo.target" in study.user_attrs or time.monotonic() >= deadline:
                break  # created and set up by hpo.run, or we are done waiting
        except HPOError as e:
            if time.monotonic() >= deadline:
                print(f"error: {e}", file=sys.stderr)
                return 2
        time.sleep(WAIT_POLL_S)
    attrs = study.user_attrs
    if "hpo.spec" not in attrs or "hpo.target" not in attrs:
        print(
            f"error: study {args.study!r} was not created by hpo.run (no spec stored on it); "
            "start it with python -m hpo.run first",
            file=sys.stderr,
        )
        return 2
    spec = dict(attrs["hpo.spec"])
    with tempfile.TemporaryDirectory(prefix="hpo-worker-") as tmp:
        spec_file = Path(tmp) / f"{spec.pop('name') or 'study'}.yaml"  # its name is the stem
        spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
        extra = ["--workers", str(args.workers)]
        extra += ["--timeout", str(args.timeout)] if args.timeout else []
        extra += ["--no-progress"] if args.no_progress else []
        return run.main([*run_args(study, url, spec_file), *extra])


if __name__ == "__main__":
    sys.exit(main())
