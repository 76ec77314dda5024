"""The one error path of every hpo command (hpo.run, hpo.worker, hpo.analyze, hpo.validate,
hpo.dashboard) and of each worker process that hpo.run --workers N spawns: bad input is one line
on stderr and exit code 2, a run that failed is one line and exit code 1, Ctrl-C or SIGTERM is
exit code 130 (the codes: hpo.errors). Never a traceback for an error the code raises on
purpose; a bug still shows its traceback. The trainer's own command, trainers.train, maps its
errors to the same codes itself: trainers/ imports nothing of hpo."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

import trainers.errors
from hpo.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, HPOError, UsageError

INTERRUPTED_MESSAGE = "interrupted: no trial is left running; rerun the same command to continue"
BAD_INPUT = (UsageError, trainers.errors.UsageError)
ON_PURPOSE = (HPOError, trainers.errors.TrainerError)


def run_cli(body: Callable[[], int], *, interrupted: str | None = "interrupted") -> int:
    """Run a command's body and turn the project's errors into their line and exit code.
    `interrupted` is what Ctrl-C prints (None: nothing, for a worker its parent speaks for)."""
    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        return body()
    except ON_PURPOSE as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, BAD_INPUT) else EXIT_FAILED
    except KeyboardInterrupt:
        if interrupted is not None:
            print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED


def raise_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM (docker stop, a preempted node) ends a command as Ctrl-C does."""
    raise KeyboardInterrupt
