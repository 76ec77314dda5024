"""Errors the trainer raises. Callers (hpo, the CLI) turn these into one clear line each.

`UsageError`s are the user's to fix (bad config, missing corpus): a CLI prints them and exits 2.
The others describe how a run ended abnormally, so a tuner can record the reason and go on.
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
    """The training loss became NaN or infinite at `step`."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"training diverged: loss is {loss} at step {step}")
        self.step = step
        self.loss = loss


class OutOfMemoryError(TrainerError):
    """The device ran out of memory; the trainer has already released what it could."""

    def __init__(self, device: str, detail: str) -> None:
        super().__init__(
            f"out of memory on {device}: {detail.splitlines()[0] if detail else ''} "
            "(try a smaller train.batch_size, model or model.block_size)"
        )
        self.device = device
