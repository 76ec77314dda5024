"""Replay a trial from its manifest: python -m hpo.run --replay 3 --study smoke

The trial's resolved config is trained again by its trainable (the manifest names it), in the
deterministic mode and with the thread count the trial ran with, to the step where it stopped
(a pruned trial stops where the pruner stopped it; its learning-rate schedule is still the full
run's). Its evaluations, final metrics and value
are compared with those stored: exactly when both ran on a CPU (float sums on a CPU depend only
on the code, the data, the seeds and the thread count), within a relative tolerance on a GPU
(bf16 autocast and atomics). What differs in the environment (corpus fingerprint, commit,
packages, hardware) is listed, as the likely cause when the metrics differ.
Exit code: 0 when the metrics match, 1 when they do not, 2 for bad input.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import UsageError
from hpo.manifest import manifest_config, outcome_manifest
from hpo.objective import error_line
from hpo.record import TrialRecord
from hpo.seam import InvalidConfig, Outcome, Run, Sink, StopTrial, execute
from hpo.storage import load_existing_study, stored_name
from hpo.study_spec import ObjectiveSpec, StudySpec
from hpo.trainable import BUILTIN_ENTRY, Trainable, load_trainable
from trainers.device import device_name

# Relative, for a replay that cannot be bit-exact (GPU kernels that were not deterministic, or
# another device): below the seed-to-seed differences hpo.validate calls real (0.3% of the loss
# and up), so a replay within it cannot hide one. To be measured on a GPU (benchmarks/gpu.md).
GPU_TOLERANCE = 1e-3
UNCOMPARED = ("system/",)  # throughput and memory: measured, not computed
ENVIRONMENT = [  # (label, path in the manifest): what is listed when it differs
    ("corpus fingerprint", ("data", "fingerprint")),
    ("tokenizer", ("data", "tokenizer")),
    ("vocabulary size", ("data", "vocab_size")),
    ("split sizes", ("data", "tokens")),
    ("seeds", ("seeds",)),
    ("training code (its commit and changes, or its source's hash)", ("code",)),
    ("git commit", ("git", "commit")),
    ("uncommitted changes (sha256 of git diff HEAD)", ("git", "diff_sha256")),
    ("python", ("python",)),
    ("torch", ("torch",)),
    ("cuda", ("cuda",)),
    ("device", ("device_name",)),
    ("CPU kernels", ("cpu_capability",)),
    ("threads", ("threads",)),
]


@dataclass
class Row:
    what: str
    stored: float | None
    replayed: float | None
    ok: bool


@dataclass
class Replay:
    """The outcome: every compared value, and what differs in the environment."""

    study: str
    trial: int
    header: str
    tolerance: float
    rows: list[Row] = field(default_factory=list)
    environment: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0

    @property
    def matches(self) -> bool:
        return all(r.ok for r in self.rows)

    def lines(self) -> list[str]:
        out = [self.header, f"  {'':<28} {'trial':>20} {'replay':>20} {'difference':>12}"]
        for r in self.rows:
            diff = (
                f"{r.replayed - r.stored:+.3g}"
                if r.stored is not None and r.replayed is not None
                else "missing"
            )
            out.append(
                f"  {r.what:<28} {_num(r.stored):>20} {_num(r.replayed):>20} {diff:>12}"
                f"{'' if r.ok else '  <- differs'}"
            )
        if self.environment:
            out.append("what differs from when the trial ran:")
            out += [f"  {line}" for line in self.environment]
        comparison = "identical" if self.tolerance == 0 else f"within {self.tolerance:g} (relative)"
        if self.matches:
            out.append(
                f"match: all {len(self.rows)} values {comparison} "
                f"(replayed in {self.wall_time_s:.1f}s)"
            )
        else:
            bad = sum(not r.ok for r in self.rows)
            cause = [e for e in self.environment if e.startswith("corpus fingerprint")]
            out.append(
                f"MISMATCH: {bad} of {len(self.rows)} values differ (wanted {comparison})"
                + (f"; {cause[0]}" if cause else "")
            )
        return out


def find_trial(study: optuna.Study, number: int) -> FrozenTrial:
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.number == number:
            return t
    span = f"trials 0-{len(trials) - 1}" if trials else "no trials"
    raise UsageError(f"no trial {number} in study {study.study_name!r} (it has {span})")


def replay_trial(
    study: optuna.Study, number: int, *, device: str | None = None, tolerance: float | None = None
) -> Replay:
    """Train trial `number` again from its manifest and compare. Raises UsageError for a trial
    that cannot be replayed (unknown, running, no manifest, its corpus gone)."""
    t = find_trial(study, number)
    record = TrialRecord.of(t)
    manifest = _manifest_of(study, t, record)
    if tolerance is not None and not tolerance >= 0:
        raise UsageError(f"--tolerance must be a non-negative number, but got {tolerance}")
    stored_device = str(manifest.get("device", "cpu")).split(":")[0]
    device = device if device not in (None, "auto") else stored_device
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"trial {number} ran on {stored_device}, and this machine has no CUDA GPU; add "
            "--device cpu to replay it on the CPU (compared within --tolerance)"
        )
    # CPU kernels are deterministic for a given thread count and instruction set (an older
    # manifest does not name it); GPU ones only in deterministic mode, on the same GPU model.
    # The replay runs in the mode the trial ran in.
    same_gpu = manifest.get("device_name") == device_name(torch.device(device))
    stored_cpu = manifest.get("cpu_capability")
    same_cpu = stored_cpu in (None, torch.backends.cpu.get_cpu_capability())
    exact = device == stored_device and (
        (device == "cpu" and same_cpu) or (bool(manifest.get("deterministic")) and same_gpu)
    )
    tolerance = tolerance if tolerance is not None else (0.0 if exact else GPU_TOLERANCE)
    entry = manifest.get("entry", BUILTIN_ENTRY)
    trainable = load_trainable(entry)
    config = manifest_config(manifest)
    if "train.device" in config:
        config["train.device"] = device
    try:
        config = trainable.resolve(config)
    except ValueError as e:
        raise UsageError(
            f"trial {number}'s manifest holds a config this code rejects: {e}"
        ) from None
    stop_at = record.steps if record.steps is not None else manifest.get("steps")
    threads = manifest.get("threads") or torch.get_num_threads()
    deterministic = bool(manifest.get("deterministic"))
    max_steps = config.get("train.max_steps")
    stopped = f"stopped at step {stop_at} of {max_steps}" if stop_at else ""
    mode = "deterministic" if deterministic else "default kernels"
    header = (
        f"replay of trial {number} of study {study.study_name!r} ({t.state.name.lower()}, "
        f"{stopped}) on {device}, {threads} thread(s), {mode} as the trial ran; "
        + ("exact comparison" if tolerance == 0 else f"relative tolerance {tolerance:g}")
    )
    if not exact and device != "cpu":
        header += " (for bit-exact GPU replays, tune with --set train.deterministic=true)"
    stored = study.user_attrs.get("hpo.spec")
    spec = StudySpec(**stored) if stored else None
    # a study copied without hpo's attributes: the default metric, in the study's direction
    direction = study.direction.name.lower()
    objective = spec.objective if spec else ObjectiveSpec(direction=direction)
    start = time.perf_counter()
    outcome = _train(trainable, config, objective, stop_at, threads, deterministic)
    out = Replay(study.study_name, number, header, tolerance)
    out.wall_time_s = time.perf_counter() - start
    fixed = spec.fixed_config(study.user_attrs.get("hpo.sets", {})) if spec else config
    out.rows = _compare(t, record, outcome, tolerance, trainable, config, fixed, objective)
    out.environment = environment_differences(
        manifest, outcome_manifest(config, outcome, entry=entry)
    )
    return out


def _manifest_of(study: optuna.Study, t: FrozenTrial, record: TrialRecord) -> dict[str, Any]:
    """The manifest a finished trial stored, or UsageError saying why there is none."""
    if t.state in (TrialState.RUNNING, TrialState.WAITING):
        raise UsageError(f"trial {t.number} of {study.study_name!r} is still running")
    if not record.manifest:
        why = record.fail_reason or t.state.name.lower()
        raise UsageError(
            f"trial {t.number} of {study.study_name!r} stored no manifest to replay from ({why})"
        )
    return record.manifest


def _compare(
    t: FrozenTrial,
    record: TrialRecord,
    outcome: Outcome,
    tolerance: float,
    trainable: Trainable,
    config: dict[str, Any],
    fixed: dict[str, Any],
    objective: ObjectiveSpec,
) -> list[Row]:
    """Every evaluation, the final metrics, the steps and the trial's value, side by side."""
    rows: list[Row] = []

    def compare(what: str, stored: Any, replayed: Any) -> None:
        rows.append(Row(what, stored, replayed, _close(stored, replayed, tolerance)))

    metric = objective.metric
    # a trial reports at the step its trainable says it counts as (hpo.gpt: the study's
    # fixed-shape step with as many tokens seen)
    replayed = {
        trainable.resource(row["step"], config, fixed): row[metric] for row in outcome.history
    }
    for step in sorted(set(t.intermediate_values) | set(replayed)):
        compare(f"{metric} @ step {step}", t.intermediate_values.get(step), replayed.get(step))
    for key in sorted(set(record.metrics) | set(outcome.metrics)):
        if not key.startswith(UNCOMPARED):
            compare(f"final {key}", record.metrics.get(key), outcome.metrics.get(key))
    compare("steps", record.steps, outcome.steps)
    if t.state == TrialState.COMPLETE and replayed:
        pick = min if objective.minimize else max
        compare("trial value", t.value, pick(replayed.values()))
    return rows


def environment_differences(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per manifest entry that differs, e.g. "corpus fingerprint differs: a vs b"."""
    lines = []
    for label, path in ENVIRONMENT:
        a, b = _get(stored, path), _get(now, path)
        if a != b:
            lines.append(f"{label} differs: {a} (trial) vs {b} (now)")
    packages = {**stored.get("packages", {}), **now.get("packages", {})}
    for name in sorted(packages):
        a, b = stored.get("packages", {}).get(name), now.get("packages", {}).get(name)
        if a != b and name != "torch":  # torch is listed above
            lines.append(f"package {name} differs: {a} (trial) vs {b} (now)")
    return lines


@dataclass(frozen=True)
class ReplayRequest:
    """What `hpo.run --replay TRIAL` is asked for: each field means its flag."""

    trial: int
    study: str | None = None  # None: the study run last on this machine
    study_name: str | None = None
    storage: str | None = None
    device: str | None = None
    tolerance: float | None = None


def replay(request: ReplayRequest) -> int:
    """`hpo.run --replay TRIAL`: print the comparison; exit 0 (match), 1 (differs), 2 (input)."""
    study = load_existing_study(stored_name(request.study, request.study_name), request.storage)
    try:
        rep = replay_trial(study, request.trial, device=request.device, tolerance=request.tolerance)
    except ReplayFailed as e:  # diverged, out of memory, an exception: not what was stored
        print(f"MISMATCH: the replay failed: {e}", file=sys.stderr)
        return 1
    print("\n".join(rep.lines()))
    return 0 if rep.matches else 1


class ReplayFailed(Exception):
    """The replayed run ended in an error the trial did not."""


class _StopAt(Sink):
    """Stops the replay where the trial stopped (a pruned trial: where the pruner stopped it)."""

    def __init__(self, step: int | None) -> None:
        self.step = step

    def report(self, run: Run, step: int, metrics: dict[str, float]) -> None:
        if self.step is not None and step >= self.step:
            raise StopTrial("replayed")


def _train(
    trainable: Trainable,
    config: dict[str, Any],
    objective: ObjectiveSpec,
    stop_at: int | None,
    threads: int,
    deterministic: bool,
) -> Outcome:
    """Run the trainable with the trial's thread count and deterministic mode, then put both
    back."""
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    try:
        with tempfile.TemporaryDirectory(prefix="hpo-replay-") as folder:
            run = Run(
                config,
                metric=objective.metric,
                minimize=objective.minimize,
                checkpoint_dir=folder,
                sink=_StopAt(stop_at),
            )
            return execute(trainable, run)
    except InvalidConfig as e:  # e.g. the corpus file is gone
        raise UsageError(f"cannot replay: {e}") from None
    except UsageError:
        raise
    except Exception as e:
        raise ReplayFailed(error_line(e)) from e
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def _close(a: Any, b: Any, tolerance: float) -> bool:
    if a is None or b is None:
        return a is b
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if tolerance == 0:
        return a == b
    return abs(a - b) <= tolerance * max(abs(a), abs(b))


def _get(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.12g}"
