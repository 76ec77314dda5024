"""Weights & Biases: one run per trial, grouped by study, offline when no API key is set.

Named wandb_tracker.py, not wandb.py: `import wandb` here must find the library.
"""

from __future__ import annotations

import contextlib
import json
import logging
import netrc
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna

from hpo.storage import masked, runs_dir
from hpo.tracking.base import Tracker
from hpo.tracking.settings import DEFAULT_PROJECT, Tracking

log = logging.getLogger(__name__)


class WandbTracker(Tracker):
    """One W&B run per trial: grouped by study, named trial_N, offline when no API key is set."""

    def __init__(self, settings: Tracking) -> None:
        super().__init__(settings)
        self.mode = wandb_mode()
        self._run: Any = None

    @property
    def root(self) -> Path:
        return Path(self.settings.uri or runs_dir())

    def _open_study(self, study: optuna.Study, manifest: dict[str, Any]) -> Tracking:
        _check_writable(self.root)
        import wandb  # noqa: F401  (fail here, once, if it is not installed)

        return replace(self.settings, study=study.study_name)

    def _close_study(self, study: optuna.Study) -> str | None:
        if self.mode != "offline":
            return None
        return (
            f"W&B ran offline; to upload the runs: wandb sync {self.root / 'wandb'}/offline-run-*"
        )

    def _start(
        self, name: str, *, config: dict[str, Any], kind: str, meta: dict[str, Any]
    ) -> dict[str, Any]:
        import wandb

        _check_writable(self.root)  # else wandb quietly writes to a temp folder instead
        study = meta.get("study") or self.settings.study
        with _masked_argv():
            self._run = wandb.init(
                project=self.settings.project or DEFAULT_PROJECT,
                group=study or None,
                name=name,
                job_type=kind,
                config=config,
                tags=[t for t in (study, kind) if t],
                dir=str(self.root),
                mode=self.mode,
                reinit="create_new",
                settings=wandb.Settings(console="off", silent=True),
            )
        return {"backend": "wandb", "run_id": self._run.id, "dir": str(Path(self._run.dir).parent)}

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def _manifest(self, manifest: dict[str, Any]) -> None:
        env = {k: v for k, v in manifest.items() if k != "config"}  # the config is there already
        self._run.config.update({"manifest": env}, allow_val_change=True)
        path = Path(self._run.dir) / "manifest.json"
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))

    def _summarize(self, values: dict[str, Any]) -> None:
        self._run.summary.update(values)

    def _finish(self, state: str, reason: str) -> None:
        run, self._run = self._run, None
        run.tags = (*run.tags, *(t for t in (state, reason) if t))
        run.finish(exit_code=1 if state == "failed" else 0)


def wandb_mode() -> str:
    """offline unless an API key is there ($WANDB_API_KEY or ~/.netrc), or $WANDB_MODE says."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode in ("online", "disabled"):
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return "online" if netrc.netrc().authenticators(host or "") else "offline"
    except (OSError, netrc.NetrcParseError) as e:
        # no ~/.netrc (the usual case), or one we cannot read: no key, so offline, as W&B
        # itself would be without one
        log.debug("no W&B key in ~/.netrc (%s: %s): offline", type(e).__name__, e)
        return "offline"


@contextlib.contextmanager
def _masked_argv() -> Iterator[None]:
    """W&B records the command line (sys.argv) in its run files, and uploads it: a password in
    a --storage URL goes there masked, as hpo prints it."""
    argv = sys.argv
    sys.argv = [masked(arg) for arg in argv]
    try:
        yield
    finally:
        sys.argv = argv


def _check_writable(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass
