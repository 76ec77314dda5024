"""hpo's errors, in the project's one family (trainers.errors): each is printed as one line by
the commands' shared wrapper (trainers.cli.run_cli)."""

from trainers.errors import TrainerError, UsageError


class HPOError(UsageError):
    """Bad input to hpo (unknown study, malformed YAML, impossible bounds, bad storage URL):
    exit code 2. The message says what is wrong and how to fix it."""


class StudyFailedError(TrainerError):
    """A study that cannot go on (its last trials all failed, its storage is gone): exit code 1.
    What is stored stays; the message says what to do."""
