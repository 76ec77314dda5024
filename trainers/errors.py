"""The trainer's errors: every error it raises on purpose is a TrainerError. A command turns one
into a single line (hpo's doors in hpo.cli.command, the trainer's own in trainers.train): a
UsageError (the user's to fix: bad config, missing corpus) exits with code 2, any other (a run
that diverged, ran out of memory, a full disk) with code 1. hpo's adapter (hpo.gpt) turns them
into the seam's signals; a tuner records a trial's error as the reason it failed and goes on.
"""


class TrainerError(Exception):
    """Base of every error the trainer raises on purpose."""


class UsageError(TrainerError, ValueError):
    """Bad input: the message says what is wrong and how to fix it."""


class ConfigError(UsageError):
    """An unknown config key, a value of the wrong type, or an inconsistent combination."""


class CorpusError(UsageError):
    """A corpus that is missing, empty, unreadable or shorter than the model's context."""


class DivergedError(TrainerError):
    """The loss became NaN, infinite, or blew up past `limit` (a finite loss far worse than a
    uniform guess is a run that has diverged, not a result) at `step`."""

    def __init__(self, step: int, loss: float, limit: float | None = None) -> None:
        why = "" if limit is None else f", above {limit:.3g} (twice a uniform guess's loss)"
        super().__init__(f"training diverged: loss is {loss:.4g} at step {step}{why}")
        self.step = step
        self.loss = loss
        self.limit = limit


class DiskFullError(TrainerError):
    """A checkpoint could not be written for lack of space on its folder's device; the
    previous checkpoint there is intact (writes are atomic)."""

    def __init__(self, folder: str, free: int, needed: int) -> None:
        super().__init__(
            f"no space left for a checkpoint in {folder} ({_mib(free)} free, about "
            f"{_mib(needed)} needed): free some, or set HPO_RUNS_DIR to a larger disk"
        )
        self.folder, self.free, self.needed = folder, free, needed

    def __reduce__(self) -> tuple:
        return DiskFullError, (self.folder, self.free, self.needed)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class OutOfMemoryError(TrainerError):
    """The device ran out of memory; the trainer has already released what it could."""

    def __init__(self, device: str, detail: str) -> None:
        super().__init__(
            f"out of memory on {device}: {detail.splitlines()[0] if detail else ''} "
            "(try a smaller train.batch_size, model or model.block_size)"
        )
        self.device = device
