"""What a trial leaves in storage beside its parameters and values: one typed record, one
writer, one reader. Both backends (hpo.objective, hpo.raytune.recorder) write it; progress, the
summary, analyze, validate, replay and the trackers read it.

The record is a single user attribute, "hpo.record", so a trial writes it in one storage commit
when it starts (who runs it, the values it derived from its parameters) and one when it ends,
instead of a commit per field. Studies written before the record existed (a user attribute per
field, the parameter count under "params") read the same way.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

ATTR = "hpo.record"

# Why a trial stopped. A finished run: max_steps, early_stopped, pruned. Pruned with a bad value
# so that the sampler learns: diverged. Failed: the rest.
DIVERGED = "diverged"
CRASHED = "crashed"  # its worker stopped sending heartbeats
INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM
INVALID_CONFIG = "invalid_config"  # a sampled config the trainer or corpus cannot run
OUT_OF_MEMORY = "out_of_memory"
STORAGE_LOST = "storage_lost"
SURPLUS = "surplus"  # another worker reached the study's target first
CONTRACT = "contract"  # the training function broke the seam's contract (hpo.seam): it stops
DISK_FULL = "disk_full"  # no space for its checkpoint: the run stops, the trial goes on later
ERROR = "error"  # the training function's own exception (its last line is the reason)
# How a run that was not stopped ended: "finished" (the function returned), or what the
# function noted (the built-in GPT: max_steps, early_stopped).
FINISHED = ("finished", "max_steps", "early_stopped")


@dataclass
class TrialRecord:
    worker: str = ""  # host:pid of the process that ran it
    backend: str = "optuna"  # or "ray"
    gpu: str | None = None  # its worker's GPU (hpo.devices), as CUDA_VISIBLE_DEVICES names it
    alone: bool = False  # trained with its GPU to itself: the retry of one out of memory there
    derived: dict[str, Any] = field(default_factory=dict)  # config values that are not params
    retry_of: int | None = None  # the crashed trial this one retries
    reevaluates: int | None = None  # a re-evaluation (hpo.noise): the search trial it trains again
    seed_index: int = 0  # ... with train.seed + seed_index
    resumed_from_step: int = 0  # the step its training resumed at (a retry, a restore)
    stop_reason: str = ""
    fail_reason: str = ""  # one line saying why, for a trial that did not finish normally
    steps: int | None = None  # trained, resumed ones included
    max_steps: int | None = None
    tokens: int | None = None  # trained: compute, comparable across batch sizes
    max_tokens: int | None = None
    best_step: int | None = None
    tokens_per_s: float | None = None
    n_params: int | None = None
    wall_time_s: float | None = None
    tuner_time_s: float | None = None  # inside training, spent on the pruner and the storage
    metrics: dict[str, float] = field(default_factory=dict)  # at the last evaluation
    manifest: dict[str, Any] | None = None  # what produced it (hpo.manifest)

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial | optuna.Trial) -> TrialRecord:
        """The record of a trial, stored now or by an older hpo (one attribute per field)."""
        attrs = trial.user_attrs
        if ATTR in attrs:
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in attrs[ATTR].items() if k in known})
        return _legacy(attrs)

    @classmethod
    def starting(
        cls, params: dict[str, Any], overrides: dict[str, Any], **fields: Any
    ) -> TrialRecord:
        """The record of a trial about to train: the config values its space derived from its
        parameters (beta2 from 1 - beta2, a batch size from its log2) are what the trainer
        got and the parameters do not show."""
        derived = {k: v for k, v in overrides.items() if k not in params}
        return cls(derived=derived, **fields)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def compute(self) -> int:
        """What it trained: in tokens where its trainer counts them (they compare trials of
        different batch sizes), else in steps."""
        return self.tokens if self.tokens is not None else (self.steps or 0)

    @property
    def max_compute(self) -> int | None:
        """What it would train unpruned, in the units of `compute`."""
        return self.max_tokens if self.tokens is not None else self.max_steps

    @property
    def failed(self) -> bool:
        """Stopped by something other than its budget or the pruner."""
        return self.stop_reason not in ("", "pruned", *FINISHED)


def write(trial: optuna.Trial, record: TrialRecord) -> None:
    """Store the record of a running trial (one commit)."""
    trial.set_user_attr(ATTR, record.to_json())


def enqueue(study: optuna.Study, params: dict[str, Any], record: TrialRecord) -> None:
    """Queue a trial with these parameters, its record started (a retry says what it retries)."""
    study.enqueue_trial(params, user_attrs={ATTR: record.to_json()})


def update_by_id(
    storage: optuna.storages.BaseStorage, trial_id: int, **changes: Any
) -> TrialRecord:
    """As update, for a storage that knows the trial by its id only (hpo.storage)."""
    record = dataclasses.replace(TrialRecord.of(storage.get_trial(trial_id)), **changes)
    storage.set_trial_user_attr(trial_id, ATTR, record.to_json())
    return record


def pruning_stats(trials: Sequence[FrozenTrial]) -> dict:
    """Trials pruned at each step (rung), and the compute pruning saved: in tokens, which
    compare trials of different batch sizes, where every trial recorded them, else in steps."""
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    per_rung = Counter(t.last_step for t in pruned if t.last_step is not None)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    counted = [r for r in map(TrialRecord.of, finished) if r.steps is not None]
    unit = "tokens" if counted and all(r.max_tokens is not None for r in counted) else "steps"
    trained = sum(getattr(r, unit) for r in counted)
    full = sum(getattr(r, f"max_{unit}") or getattr(r, unit) for r in counted)
    return {
        "pruned": len(pruned),
        "pruned_per_step": dict(sorted(per_rung.items())),
        "unit": unit,
        "trained": trained,
        "without_pruning": full,
        "saved": 1 - trained / full if full else 0.0,
    }


_LEGACY_NAMES = {"params": "n_params"}


def _legacy(attrs: dict[str, Any]) -> TrialRecord:
    """A record from the attribute-per-field layout; config keys were the derived values."""
    known = {f.name for f in dataclasses.fields(TrialRecord)}
    fields = {_LEGACY_NAMES.get(k, k): v for k, v in attrs.items()}
    record = TrialRecord(**{k: v for k, v in fields.items() if k in known and k != "derived"})
    record.derived = {k: v for k, v in attrs.items() if "." in k and k.split(".")[0] in _GROUPS}
    return record


_GROUPS = ("data", "model", "optim", "schedule", "train")
