"""hpo's errors: one root, HPOError, for every error hpo raises on purpose. The doors print each
as one line and exit with its code (hpo.cli.command); a tuner records a trial's error as the
reason it failed and goes on. The built-in trainer has its own family (trainers.errors), which
the doors read the same way: bad input exits 2, a run that could not go on exits 1."""

# the exit code of each outcome, the same in every command and spawned worker
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class HPOError(Exception):
    """Root of every error hpo raises on purpose: exit code 1 unless a subclass says otherwise."""


class UsageError(HPOError, ValueError):
    """Bad input to hpo (unknown study, malformed YAML, impossible bounds, bad storage URL):
    exit code 2. The message says what is wrong and how to fix it."""


class StudyFailedError(HPOError):
    """A study that cannot go on (its last trials all failed, its storage is gone, the disk is
    full): exit code 1. What is stored stays; the message says what to do."""
