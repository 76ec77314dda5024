"""What runs on the Ray workers: one trial's trainable behind the seam, each report sent to
Tune with the trial's checkpoint folder.

Ray pickles run_trial by its module path, so this module must import on every node.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from hpo.manifest import trial_manifest
from hpo.objective import error_line
from hpo.raytune.search import trial_config
from hpo.record import CONTRACT, DIVERGED, ERROR, INVALID_CONFIG, OUT_OF_MEMORY
from hpo.seam import (
    LAST,
    ContractError,
    Diverged,
    InvalidConfig,
    Outcome,
    OutOfMemory,
    Run,
    Sink,
    execute,
)
from hpo.study_spec import StudySpec
from hpo.trainable import Trainable, steps_of

ORIGIN = "origin.json"  # in each checkpoint: whose state it is and at which step


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its config (shipped once to the workers)."""

    spec: dict[str, Any]  # StudySpec.to_json(): workers need not see the YAML file
    sets: dict[str, Any]
    threads: int


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """One Ray trial: the trainable with the trial's config, every report sent to Tune.

    Restored (a retry after a crash, or PBT copying a better member): the trial's folder holds
    the checkpoint Ray hands over, and the function's restore continues from it, with this
    trial's current config.
    """
    torch.set_num_threads(setup.threads)
    spec = StudySpec(**setup.spec)
    trainable = spec.trainable()
    # steps Ray sees are the fixed config's, at equal compute (Trainable.resource)
    fixed = spec.fixed_config(setup.sets)
    run_config = trainable.budget(trial_config(config, spec, setup.sets), fixed)
    work = Path(tune.get_context().get_trial_dir()) / "hpo-checkpoint"
    sink = RaySink(trainable, run_config, fixed, work, spec=spec)
    run = Run(
        run_config,
        metric=spec.objective.metric,
        minimize=spec.objective.minimize,
        checkpoint_dir=work,
        sink=sink,
        trial=config.get("hpo_number"),
    )
    try:
        _refuse_a_donors_framework_checkpoint(sink, work)
        outcome = execute(trainable, run)
    except Diverged as e:
        sink.failed(run, DIVERGED, str(e), value=e.value, step=e.step)
    except (OutOfMemory, torch.OutOfMemoryError) as e:
        sink.failed(run, OUT_OF_MEMORY, error_line(e))
    except InvalidConfig as e:
        sink.failed(run, INVALID_CONFIG, str(e))
    except ContractError as e:
        sink.failed(run, CONTRACT, str(e))  # the driver stops the study (Driver.contract)
    except Exception as e:  # the function's own exception: deterministic, not retried
        sink.failed(run, ERROR, error_line(e))
    except BaseException:  # stopped or paused by the scheduler (SystemExit), or a crash
        shutil.rmtree(work, ignore_errors=True)  # what matters was reported with a checkpoint
        raise
    else:
        sink.finished(run, outcome)
    shutil.rmtree(work, ignore_errors=True)


def _refuse_a_donors_framework_checkpoint(sink: RaySink, work: Path) -> None:
    """PBT's exploit hands a trial another member's checkpoint with perturbed settings. hpo's
    own save (run.save with objects) keeps the new optimizer settings on restore; a framework's
    own checkpoint (run.save(step) alone: the Trainer's, Lightning's, a script's files) restores
    the donor's optimizer and schedule, so the perturbed values would be recorded, not trained."""
    donor = sink.origin["trial_id"]
    if donor and donor != sink.me and not (work / LAST).exists():
        raise ContractError(
            "PBT/PB2 cannot perturb a trial whose checkpoints are its framework's own (the "
            "function saves with run.save(step) alone): the framework restores the donor's "
            "optimizer settings, so the perturbed ones would not take effect; use --scheduler "
            "asha, or save and restore through run.save(step, model=..., optimizer=...)"
        )


class RaySink(Sink):
    """Tells Tune about one start of a trial function: each report (with the checkpoint the
    function saved at that step), then how it ended. Every row carries what the driver's
    Recorder writes into the study.

    A report goes to Tune with its step's checkpoint: at once when the function saved before
    reporting (the built-in GPT), at the save right after it otherwise (the documented order),
    and without one, at the next report, for a function that does not save (or not at that
    step)."""

    def __init__(
        self,
        trainable: Trainable,
        config: dict[str, Any],
        fixed: dict[str, Any],
        work: Path,
        *,
        spec: StudySpec,
    ) -> None:
        self.trainable, self.config, self.fixed, self.work = trainable, config, fixed, work
        self.spec, self.metric = spec, spec.objective.metric
        self.me = tune.get_context().get_trial_id()
        self.origin = _restore(work)
        max_steps = steps_of(config)[0]
        self.static = {
            "hpo/segment": uuid.uuid4().hex[:12],  # one per start of the trial function
            "hpo/restored_from": self.origin["trial_id"],  # this trial's checkpoint or a donor's
            "hpo/restored_step": self.at(self.origin["step"]),
            "hpo/node_id": ray.get_runtime_context().get_node_id(),
            "hpo/pid": os.getpid(),
            "hpo/max_steps": self.at(max_steps) if max_steps is not None else None,
        }
        self.started = time.perf_counter()
        self.clock = {"step": self.origin["step"], "tokens": 0.0, "seconds": 0.0}
        self.last: dict[str, Any] = {}
        self.pending: tuple[int, dict[str, Any]] | None = None  # a report waiting for its save
        self.saved_at: int | None = None
        self.saves: bool | None = None  # whether the function saves (None: not known yet)

    def at(self, step: int) -> int:
        return self.trainable.resource(step, self.config, self.fixed)

    def report(self, run: Run, step: int, metrics: dict[str, float]) -> None:
        if self.pending is not None:  # no save came between two reports
            if self.saves is None:  # nor ever before: it does not save
                self.saves = False
            self._send(self.pending[1], checkpoint=False)
        self._clock(step, metrics)
        self.last = self._row(run, step, metrics, "running")
        if self.saved_at == step:
            self._send(self.last, checkpoint=True)
        elif self.saves is False:
            self._send(self.last, checkpoint=False)
        else:
            self.pending = (step, self.last)

    def saved(self, run: Run, step: int) -> None:
        self.saves, self.saved_at = True, step
        (self.work / ORIGIN).write_text(json.dumps({"trial_id": self.me, "step": step}))
        if self.pending is not None and self.pending[0] == step:
            self._send(self.pending[1], checkpoint=True)

    def failed(
        self,
        run: Run,
        reason: str,
        message: str,
        *,
        value: float | None = None,
        step: int | None = None,
    ) -> None:
        """Deterministic, so a retry would fail again: the trial ends here. A diverged trial
        is pruned with a bad value, as with the Optuna backend (hpo.objective)."""
        self._flush()
        worst = self.spec.objective.worst
        value = worst if value is None else value
        at = self.at(step) if step is not None else self.last.get("step", 0)
        failed = {"hpo/failed": reason, "hpo/fail_reason": message}
        tune.report({**self.static, **self.last, self.metric: value, "step": at, **failed})

    def finished(self, run: Run, outcome: Outcome) -> None:
        self._flush()
        # restored at its last step (PBT may exploit there), nothing was left to train: the
        # checkpoint's last report stands
        metrics = outcome.metrics or {self.metric: self.spec.objective.worst}
        row = self._row(run, outcome.steps or 0, metrics, outcome.stop_reason)
        tune.report({**row, "hpo/done": 1, "hpo/stop_reason": outcome.stop_reason})

    def _flush(self) -> None:
        if self.pending is not None:
            self._send(self.pending[1], checkpoint=False)

    def _send(self, row: dict[str, Any], *, checkpoint: bool) -> None:
        self.pending = None
        saved = checkpoint and (self.work / ORIGIN).exists()
        tune.report(
            dict(row), checkpoint=tune.Checkpoint.from_directory(str(self.work)) if saved else None
        )

    def _clock(self, step: int, metrics: dict[str, float]) -> None:
        """Tokens per second over this start of the function, for a trainable that counts
        tokens and reports its speed (system/tokens_per_s)."""
        tokens = (step - self.clock["step"]) * (self.trainable.tokens_per_step(self.config) or 0)
        self.clock.update(step=step, tokens=self.clock["tokens"] + tokens)
        if "system/tokens_per_s" in metrics:
            self.clock["seconds"] += tokens / max(metrics["system/tokens_per_s"], 1e-9)

    def _row(
        self, run: Run, step: int, metrics: dict[str, float], stop_reason: str
    ) -> dict[str, Any]:
        per_step = self.trainable.tokens_per_step(self.config)
        max_steps = steps_of(self.config)[0]
        manifest = trial_manifest(
            self.config,
            entry=self.spec.entry,
            facts=run.facts,
            seeds={**run.seeds, **run.facts.get("seeds", {})},
            steps=step,
            stop_reason=stop_reason,
        )
        speed = self.clock["tokens"] / self.clock["seconds"] if self.clock["seconds"] else None
        return {
            **self.static,
            **metrics,  # val/loss, val/accuracy, train/loss, lr, system/...: schedulers read them
            "step": self.at(step),
            "hpo/n_params": run.facts.get("n_params"),
            "hpo/tokens": step * per_step if per_step else None,
            "hpo/max_tokens": max_steps * per_step if per_step and max_steps else None,
            "hpo/metrics": json.dumps(metrics),
            "hpo/tokens_per_s": round(speed, 1) if speed is not None else None,
            "hpo/wall_time_s": round(time.perf_counter() - self.started, 3),
            "hpo/manifest": json.dumps(manifest, default=str),
        }


def _restore(work: Path) -> dict[str, Any]:
    """An empty folder for the trial's checkpoints, or the checkpoint Ray hands over (a retry,
    a restored experiment, PBT's exploit): whose state it is and at which step."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    restored = tune.get_checkpoint()
    if restored is None:
        return {"trial_id": "", "step": 0}
    restored.to_directory(str(work))
    return json.loads((work / ORIGIN).read_text())
