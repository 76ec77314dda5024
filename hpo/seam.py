"""The seam between hpo and any PyTorch training code: the `Run` a training function reports
through, and `execute`, which every engine (the Optuna objective, the Ray trainable,
hpo.validate, replay, seed re-evaluations) calls to run one.

    def train(config: dict, run: hpo.Run) -> None:
        model, opt = build(config, seed=run.seed("init"))
        step = run.restore(model=model, optimizer=opt)       # 0, or where a crashed try got to
        while step < config["train.max_steps"]:
            ...
            if step % config["train.eval_interval"] == 0:
                run.report(step, {"val/accuracy": acc})       # raises to stop: pruned, diverged
                run.save(step, model=model, optimizer=opt)    # what a retry or PBT restores
        if run.scores_test:                                    # hpo.validate
            run.restore(model=model, best=True)
            run.report_test({"test/accuracy": ...})

What each call means to hpo:
- report(step, metrics): one evaluation. The objective's metric is checked, goes to the pruner
  (or Ray's scheduler) at `step`, and decides the trial's value (its best over the reports). A
  stop (pruned) raises StopTrial; a non-finite objective raises Diverged.
- save(step, **objects) / restore(**objects): `last.pt` in the trial's own folder (and
  `best.pt` when that step's report was the best so far), with every RNG hpo knows of. A trial
  retried after its worker died, a PBT member copying a better one, a Ray trial paused and
  resumed: all continue from it. restore(best=True) loads the best report's weights (to score
  the test split on).
- seed(component): a seed per component, derived from the run's root seed (`train.seed`):
  paired across the configs hpo.validate compares, and changed by it seed by seed.
- scores_test / report_test: hpo.validate asks the function to score the test split.

A function that breaks this contract (never reports the objective, steps that do not
increase, a report that is not a number) stops the study with ContractError: one line, exit 2.
"""

from __future__ import annotations

import errno
import math
import numbers
import random
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpo.errors import UsageError
from hpo.trainable import SEED_KEY, Trainable
from trainers import DiskFullError, checkpoint

LAST = "last.pt"  # the latest save: what a retry, a restored Ray trial or a PBT copy continues
BEST = "best.pt"  # the save at the best report so far: what hpo.validate scores on test


class StopTrial(Exception):
    """Raised by `Run.report` when the trial must stop (the pruner, Ray's scheduler, the last
    step of a replay). Let it propagate; a function that catches it anyway is still stopped."""

    def __init__(self, reason: str = "pruned") -> None:
        super().__init__(reason)
        self.reason = reason


class Diverged(Exception):
    """Training blew up at `step`. `Run.report` raises it for a non-finite objective; a
    function may raise it too (a loss above a limit it knows). The trial is pruned with
    stop_reason "diverged" and reports `value` there (default: worse than any real value),
    so that the sampler learns to avoid its region."""

    def __init__(self, step: int, reason: str, value: float | None = None) -> None:
        super().__init__(reason)
        self.step, self.value = step, value

    def __reduce__(self) -> tuple:  # from a Ray task back to the driver
        return Diverged, (self.step, str(self), self.value)


class InvalidConfig(Exception):
    """Raise it when a sampled config cannot run (heads that do not divide the width): the
    trial fails with stop_reason "invalid_config" and the study goes on."""


class OutOfMemory(Exception):
    """The device ran out of memory (torch.OutOfMemoryError is read the same way): the trial
    is recorded "out_of_memory", and on a shared GPU retried with the GPU to itself."""


class DiskFull(Exception):
    """No space left to write a checkpoint (an OSError with ENOSPC from the function's own
    writes is read the same way): the trial is recorded "disk_full" and continued from its
    last checkpoint when the study resumes, and the run stops with one line."""


def disk_full(e: BaseException | None) -> BaseException | None:
    """The DiskFull, or the out-of-space OSError, behind an exception; None if none is."""
    while e is not None:
        if isinstance(e, DiskFull | DiskFullError) or (
            isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
        ):
            return e
        e = e.__cause__ or e.__context__
    return None


class ContractError(UsageError):
    """The training function does not keep the seam's contract: the study stops (exit 2)."""


class Sink:
    """Where an engine takes a run's reports. The default takes nothing (hpo.validate)."""

    def report(self, run: Run, step: int, metrics: dict[str, float]) -> None:
        """One evaluation; raise StopTrial to stop the run."""

    def saved(self, run: Run, step: int) -> None:
        """The function saved a checkpoint at `step` (in run.checkpoint_dir)."""


class Config(dict):
    """The config a function gets: a plain dict that notes which keys were read, so that hpo
    can name a tuned key the function never reads."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def _all(self) -> None:
        self.read.update(super().keys())

    # reading all of it: copies (dict(config), {**config}) go through these too
    def __iter__(self):
        self._all()
        return super().__iter__()

    def keys(self):
        self._all()
        return super().keys()

    def items(self):
        self._all()
        return super().items()

    def values(self):
        self._all()
        return super().values()

    def copy(self) -> dict[str, Any]:
        self._all()
        return dict(super().items())

    def __reduce__(self):  # pickles as the plain dict it is
        return dict, (dict(super().items()),)


@dataclass
class Outcome:
    """What a run left: everything an engine records of it (picklable, for Ray tasks)."""

    history: list[dict[str, float]]  # one row per report: {"step": s, **metrics}
    metrics: dict[str, float]  # the last report's
    steps: int | None  # the last reported step
    best_step: int | None
    best_value: float | None  # the objective's best over the reports
    stop_reason: str  # why it ended: the engine's stop ("pruned"), the function's own, finished
    test_metrics: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)  # run.note: n_params, device, data, ...
    seeds: dict[str, int] = field(default_factory=dict)  # what run.seed handed out
    resumed_from: int = 0
    wall_time_s: float = 0.0
    tuner_time_s: float = 0.0  # inside report and save, spent on the pruner and the storage
    read: frozenset[str] = frozenset()  # config keys the function read


class Run:
    """What a training function sees of hpo (see the module's docstring)."""

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        metric: str,
        minimize: bool,
        checkpoint_dir: str | Path,
        sink: Sink | None = None,
        scores_test: bool = False,
        trial: int | None = None,
        log_dir: str | Path | None = None,
    ) -> None:
        self._config = Config(config)
        self.metric, self.minimize = metric, minimize
        #: this trial's own folder: run.save writes there, and a function with checkpoints of
        #: its own (a Trainer's) may keep them there; hpo keeps it for retries and the best trial
        self.checkpoint_dir = Path(checkpoint_dir)
        #: where a function keeps its logs (a script's stdout and stderr): kept with the study
        #: when the checkpoints of losing trials are cleaned away
        self.log_dir = Path(log_dir) if log_dir is not None else self.checkpoint_dir
        #: True when hpo.validate runs the function: score the test split (report_test)
        self.scores_test = scores_test
        #: the trial's number in its study (None outside a study)
        self.trial = trial
        self.sink = sink or Sink()
        self.history: list[dict[str, float]] = []
        self.best_step: int | None = None
        self.best_value: float | None = None
        self.test_metrics: dict[str, float] = {}
        self.stopped: str | None = None  # why the engine stopped it
        self.diverged: Diverged | None = None
        self.broken: ContractError | None = None  # how the function broke the contract
        self._saved_step: int | None = None  # of the latest save of objects
        self.facts: dict[str, Any] = {}
        self.seeds: dict[str, int] = {}
        self.resumed_from = 0
        self.tuner_s = 0.0
        self._root = _root_seed(config)
        self._started = time.perf_counter()

    @property
    def config(self) -> dict[str, Any]:
        """The config the function trains with: fixed settings and sampled values."""
        return self._config

    def seed(self, component: str = "init") -> int:
        """A seed for one component (init, data, dropout, ...), derived from the run's root
        seed: the same component of two configs gets the same seed."""
        sequence = np.random.SeedSequence([self._root, zlib.crc32(component.encode())])
        seed = int(sequence.generate_state(1)[0])
        self.seeds[component] = seed
        return seed

    def report(self, step: int, metrics: Mapping[str, Any]) -> None:
        """One evaluation at `step` (steps increase): raises StopTrial when the trial must
        stop, Diverged when the objective is not finite."""
        if self.stopped is not None:
            raise StopTrial(self.stopped)  # a function that went on after being stopped
        try:
            step = self._check_step(step)
            values = self._check_metrics(step, metrics)
        except ContractError as e:
            self.broken = e  # raised again after the function, whatever it does with it
            raise
        value = values[self.metric]
        if not math.isfinite(value):
            if self.trial == 0 and not self.history:
                self.broken = ContractError(
                    f"trial 0 reported {self.metric} = {value} at its first report (step "
                    f"{step}): check how the function computes it, or whether the first "
                    "config diverges at once (narrow its range); the study stops here rather "
                    "than record a study of non-finite values"
                )
                raise self.broken
            self.diverged = Diverged(step, f"{self.metric} is {value} at step {step}")
            raise self.diverged
        self.history.append({"step": step, **values})
        if self._better(value):
            self.best_step, self.best_value = step, value
            if self._saved_step == step:  # saved before reporting: that save is the best
                checkpoint.save(
                    self.checkpoint_dir / BEST, checkpoint.load(self.checkpoint_dir / LAST)
                )
        start = time.perf_counter()
        try:
            self.sink.report(self, step, values)
        except StopTrial as e:
            self.stopped = e.reason
            raise
        finally:
            self.tuner_s += time.perf_counter() - start

    def save(self, step: int, **objects: Any) -> None:
        """Checkpoint `objects` (a model, an optimizer, a scheduler, anything with
        state_dict(), a torch.Generator, or a dict of plain values) with every RNG state, as
        of `step`. With no
        objects: the function wrote a complete checkpoint of `step` into checkpoint_dir itself
        (a framework's own), and hpo hands that folder on (Ray, PBT) as it is."""
        if not objects:
            self.sink.saved(self, int(step))
            return
        state = {
            "step": int(step),
            "config": dict.copy(self._config),  # not a read by the function
            "objects": {name: _state_of(name, obj) for name, obj in objects.items()},
            "rng": _rng_state(),
            "run": {
                "history": self.history,
                "best_step": self.best_step,
                "best_value": self.best_value,
            },
        }
        self._note_model(objects)
        start = time.perf_counter()
        try:
            # best.pt first: a crash between the two writes leaves a last.pt no newer than it
            if self.best_step == step:
                checkpoint.save(self.checkpoint_dir / BEST, state)
            checkpoint.save(self.checkpoint_dir / LAST, state)
        except DiskFullError as e:
            raise DiskFull(str(e)) from e
        self._saved_step = int(step)
        try:
            self.sink.saved(self, int(step))
        finally:
            self.tuner_s += time.perf_counter() - start

    def restore(self, *, best: bool = False, **objects: Any) -> int:
        """Load the last save into `objects` and return its step (0, touching nothing, when
        there is none). A run restored from another trial's save (PBT) keeps the optimizer
        settings its own config built (learning rate, weight decay, betas) and takes the rest.
        best=True: the weights of the best report's save (to score them), no RNG or history."""
        path = self.checkpoint_dir / (BEST if best else LAST)
        saved = checkpoint.load(path)
        if saved is None:
            if best:
                raise ContractError(
                    f"run.restore(best=True): there is no {BEST} in {self.checkpoint_dir}; call "
                    "run.save(step, ...) after each run.report, or score the current weights"
                )
            return 0
        missing = sorted(objects.keys() - saved["objects"].keys())
        if missing:
            raise ContractError(
                f"run.restore: the checkpoint has no {missing[0]!r} (it holds "
                f"{', '.join(sorted(saved['objects']))})"
            )
        other_config = saved["config"] != dict.copy(self._config)
        _load(objects, saved["objects"], keep_settings=other_config and not best)
        self._note_model(objects)
        if best:
            return int(saved["step"])
        _set_rng_state(saved["rng"])
        self.history = list(saved["run"]["history"])
        self.best_step, self.best_value = saved["run"]["best_step"], saved["run"]["best_value"]
        self.resumed_from = int(saved["step"])
        return self.resumed_from

    def restored(self, step: int, history: list[dict[str, float]]) -> None:
        """For a function that checkpoints by itself (a framework's own checkpoints): it
        resumed at `step`, after the reports in `history` ({"step": s, **metrics} rows). May
        be called once training is done; the run's history is then theirs and its own."""
        earlier = [dict(row) for row in history if row["step"] <= step]
        self.history = earlier + [row for row in self.history if row["step"] > step]
        self.best_step = self.best_value = None
        for row in self.history:
            if self._better(row[self.metric]):
                self.best_step, self.best_value = int(row["step"]), row[self.metric]
        self.resumed_from = int(step)

    def report_test(self, metrics: Mapping[str, Any]) -> None:
        """The test split's metrics (`test/...`), when `scores_test`."""
        values = {}
        for key, value in metrics.items():
            if not str(key).startswith("test/"):
                raise ContractError(
                    f"run.report_test: {key!r} is not a test metric; name them test/<name>"
                )
            values[str(key)] = _number(key, value, "run.report_test")
        self.test_metrics.update(values)

    def note(self, **facts: Any) -> None:
        """Facts about the run that are not metrics, for its record and manifest: n_params,
        device, data (a fingerprint of what it trained on), seeds, stop_reason, tokens_per_s."""
        self.facts.update(facts)

    def outcome(self) -> Outcome:
        last = self.history[-1] if self.history else {}
        return Outcome(
            history=self.history,
            metrics={k: v for k, v in last.items() if k != "step"},
            steps=int(last["step"]) if last else None,
            best_step=self.best_step,
            best_value=self.best_value,
            stop_reason=self.stopped or self.facts.get("stop_reason") or "finished",
            test_metrics=self.test_metrics,
            facts=self.facts,
            seeds={**self.seeds, **self.facts.get("seeds", {})},
            resumed_from=self.resumed_from,
            wall_time_s=time.perf_counter() - self._started,
            tuner_time_s=self.tuner_s,
            read=frozenset(self._config.read),
        )

    def _better(self, value: float) -> bool:
        best = self.best_value
        return best is None or (value < best if self.minimize else value > best)

    def _check_step(self, step: Any) -> int:
        if not isinstance(step, numbers.Integral) or isinstance(step, bool) or step < 0:
            raise ContractError(
                f"run.report(step, ...): step must be a whole number >= 0, but got {step!r}"
            )
        if self.history and step <= self.history[-1]["step"]:
            raise ContractError(
                f"run.report: steps must increase, but step {step} came after step "
                f"{self.history[-1]['step']}"
            )
        return int(step)

    def _check_metrics(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        if not isinstance(metrics, Mapping):
            raise ContractError(
                f"run.report(step, metrics): metrics must be a dict, but got "
                f"{type(metrics).__name__}"
            )
        if self.metric not in metrics:
            raise ContractError(
                f"run.report at step {step} has no {self.metric!r}, the study objective's "
                f"metric (it reported {', '.join(map(repr, metrics)) or 'nothing'}); report it, "
                "or name one of these in objective.metric"
            )
        return {str(k): _number(k, v, "run.report") for k, v in metrics.items()}

    def _note_model(self, objects: dict[str, Any]) -> None:
        for obj in objects.values():
            if isinstance(obj, torch.nn.Module):
                params = list(obj.parameters())
                self.facts.setdefault("n_params", sum(p.numel() for p in params))
                if params:
                    self.facts.setdefault("device", str(params[0].device))
                return


def execute(trainable: Trainable, run: Run) -> Outcome:
    """Call the function with its run and check the contract: what it did, or the exception
    that ended it (Diverged, InvalidConfig, OutOfMemory, ContractError, its own)."""
    _seed_everything(run.seed("global"))  # what a function does not seed itself is seeded too
    engine_stop = False
    try:
        trainable(run.config, run)
    except StopTrial as e:
        engine_stop = run.stopped is not None
        run.stopped = run.stopped or e.reason  # else the function stopped itself
    except Exception:
        # what report raised, caught by the function and followed by an exception of its own
        _raise_what_report_raised(run)
        raise
    else:
        engine_stop = run.stopped is not None
    _raise_what_report_raised(run)
    if not engine_stop and not run.history:
        raise ContractError(
            f"the training function returned without reporting {run.metric!r}: call "
            f"run.report(step, {{{run.metric!r}: value}}) at each evaluation"
        )
    if run.scores_test and not run.test_metrics:
        raise ContractError(
            "hpo.validate needs the test split scored: when run.scores_test, call "
            "run.report_test({'test/<metric>': value}) before returning"
        )
    return run.outcome()


def _raise_what_report_raised(run: Run) -> None:
    """A broken contract or a divergence that report raised stands, even if the function
    caught it (a broad except around its loop)."""
    if run.broken is not None:
        raise run.broken
    if run.diverged is not None:
        raise run.diverged


def _root_seed(config: Mapping[str, Any]) -> int:
    seed = config.get(SEED_KEY, 0)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ContractError(f"{SEED_KEY} must be a whole number, but got {seed!r}")
    return int(seed)


def _number(key: Any, value: Any, where: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ContractError(f"{where}: {key!r} must be a number, but got {value!r}")
    return float(value)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _state_of(name: str, obj: Any) -> Any:
    if isinstance(obj, torch.Generator):
        return {"generator": obj.get_state()}
    if isinstance(obj, np.random.Generator):
        return {"bit_generator": obj.bit_generator.state}
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    if isinstance(obj, dict):
        return dict(obj)
    raise ContractError(
        f"run.save: cannot save {name!r} ({type(obj).__name__}): give objects with state_dict() "
        "(a model, an optimizer, a scheduler), a torch.Generator or a dict"
    )


def _load(objects: dict[str, Any], states: dict[str, Any], *, keep_settings: bool) -> None:
    """Load each object's state. keep_settings (a save of another config: PBT's copy): the
    optimizers keep their own settings, and their learning rates follow their own base rate
    at the restored point of the schedule."""
    optimizers = {n: o for n, o in objects.items() if isinstance(o, torch.optim.Optimizer)}
    # schedules that scale a base rate per group (LambdaLR, StepLR, CosineAnnealingLR, ...);
    # others (ReduceLROnPlateau, SequentialLR) are restored as they are
    schedulers = {
        n: s
        for n, s in objects.items()
        if isinstance(getattr(s, "base_lrs", None), list) and hasattr(s, "optimizer")
    }
    own_groups = {n: [dict(g) for g in o.param_groups] for n, o in optimizers.items()}
    own_bases = {n: list(s.base_lrs) for n, s in schedulers.items()}
    for name, obj in objects.items():
        state = states[name]
        if isinstance(obj, torch.Generator):
            obj.set_state(state["generator"])
        elif isinstance(obj, np.random.Generator):
            obj.bit_generator.state = state["bit_generator"]
        elif isinstance(obj, dict) and not hasattr(obj, "load_state_dict"):
            obj.clear()
            obj.update(state)
        else:
            obj.load_state_dict(state)
    if not keep_settings:
        return
    scheduler_of = {id(s.optimizer): n for n, s in schedulers.items()}
    for name, opt in optimizers.items():
        sched = scheduler_of.get(id(opt))
        for i, (group, own) in enumerate(zip(opt.param_groups, own_groups[name], strict=True)):
            restored_lr = group["lr"]
            group.update({k: v for k, v in own.items() if k not in ("params", "lr", "initial_lr")})
            if sched is None:
                group["lr"] = own["lr"]
                continue
            base, copied_base = own_bases[sched][i], schedulers[sched].base_lrs[i]
            group["lr"] = restored_lr * base / copied_base if copied_base else base
            group["initial_lr"] = base
        if sched is not None:
            schedulers[sched].base_lrs = own_bases[sched]


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
