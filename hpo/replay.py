"""Replay a trial from its manifest: python -m hpo.run --replay 3 --study smoke

The trial's resolved config is trained again, in deterministic mode with the thread count the
trial ran with, to the step where it stopped (a pruned trial stops where the pruner stopped it;
its learning-rate schedule is still the full run's). Its evaluations, final metrics and value
are compared with those stored: exactly when both ran on a CPU (float sums on a CPU depend only
on the code, the data, the seeds and the thread count), within a relative tolerance on a GPU
(bf16 autocast and atomics). What differs in the environment (corpus fingerprint, commit,
packages, hardware) is listed, as the likely cause when the metrics differ.
Exit code: 0 when the metrics match, 1 when they do not, 2 for bad input.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpo.budget import resource
from hpo.errors import HPOError
from hpo.flags import stored_name
from hpo.manifest import result_manifest
from hpo.record import TrialRecord
from hpo.storage import load_existing_study
from hpo.study_spec import StudySpec
from trainers import StopTraining, TrainConfig, TrainerError, TrainResult, UsageError, train
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
    raise HPOError(f"no trial {number} in study {study.study_name!r} (it has {span})")


def replay_trial(
    study: optuna.Study, number: int, *, device: str | None = None, tolerance: float | None = None
) -> Replay:
    """Train trial `number` again from its manifest and compare. Raises HPOError for a trial
    that cannot be replayed (unknown, running, no manifest, its corpus gone)."""
    t = find_trial(study, number)
    record = TrialRecord.of(t)
    manifest = _manifest_of(study, t, record)
    if tolerance is not None and not tolerance >= 0:
        raise HPOError(f"--tolerance must be a non-negative number, but got {tolerance}")
    stored_device = str(manifest.get("device", "cpu")).split(":")[0]
    device = device if device not in (None, "auto") else stored_device
    if device == "cuda" and not torch.cuda.is_available():
        raise HPOError(
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
    try:
        cfg = TrainConfig.from_dict(manifest["config"]).with_overrides({"train.device": device})
    except UsageError as e:
        raise HPOError(f"trial {number}'s manifest holds a config this code rejects: {e}") from None
    stop_at = record.steps if record.steps is not None else manifest.get("steps")
    threads = manifest.get("threads") or torch.get_num_threads()

    def report(step: int, metrics: dict[str, float]) -> None:
        if stop_at is not None and step >= stop_at:
            raise StopTraining("replayed")  # where the trial stopped (pruned: the pruner's step)

    stopped = f"stopped at step {stop_at} of {cfg.train.max_steps}" if stop_at else ""
    mode = "deterministic" if cfg.train.deterministic else "default kernels"
    header = (
        f"replay of trial {number} of study {study.study_name!r} ({t.state.name.lower()}, "
        f"{stopped}) on {device}, {threads} thread(s), {mode} as the trial ran; "
        + ("exact comparison" if tolerance == 0 else f"relative tolerance {tolerance:g}")
    )
    if not exact and device != "cpu":
        header += " (for bit-exact GPU replays, tune with --set train.deterministic=true)"
    start = time.perf_counter()
    result = _train(cfg, report, threads)
    out = Replay(study.study_name, number, header, tolerance)
    out.wall_time_s = time.perf_counter() - start
    out.rows = _compare(study, t, record, cfg, result, tolerance)
    out.environment = environment_differences(manifest, result_manifest(cfg, result))
    return out


def _manifest_of(study: optuna.Study, t: FrozenTrial, record: TrialRecord) -> dict[str, Any]:
    """The manifest a finished trial stored, or HPOError saying why there is none."""
    if t.state in (TrialState.RUNNING, TrialState.WAITING):
        raise HPOError(f"trial {t.number} of {study.study_name!r} is still running")
    if not record.manifest:
        why = record.fail_reason or t.state.name.lower()
        raise HPOError(
            f"trial {t.number} of {study.study_name!r} stored no manifest to replay from ({why})"
        )
    return record.manifest


def _compare(
    study: optuna.Study,
    t: FrozenTrial,
    record: TrialRecord,
    cfg: TrainConfig,
    result: TrainResult,
    tolerance: float,
) -> list[Row]:
    """Every evaluation, the final metrics, the steps and the trial's value, side by side."""
    rows: list[Row] = []

    def compare(what: str, stored: Any, replayed: Any) -> None:
        rows.append(Row(what, stored, replayed, _close(stored, replayed, tolerance)))

    metric = study.user_attrs.get("hpo.spec", {}).get("objective", {}).get("metric", "val/loss")
    # a trial reports at the study's fixed-shape step with as many tokens seen (hpo.budget)
    spec = study.user_attrs.get("hpo.spec")
    base = StudySpec(**spec).train_config(study.user_attrs.get("hpo.sets", {})) if spec else cfg
    replayed = {resource(row["step"], cfg, base): row[metric] for row in result.history}
    for step in sorted(set(t.intermediate_values) | set(replayed)):
        compare(f"{metric} @ step {step}", t.intermediate_values.get(step), replayed.get(step))
    for key in sorted(set(record.metrics) | set(result.metrics)):
        if not key.startswith(UNCOMPARED):
            compare(f"final {key}", record.metrics.get(key), result.metrics.get(key))
    compare("steps", record.steps, result.steps)
    if t.state == TrialState.COMPLETE and replayed:
        pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
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


def replay_main(args: argparse.Namespace) -> int:
    """`hpo.run --replay TRIAL`: print the comparison; exit 0 (match), 1 (differs), 2 (input)."""
    study = load_existing_study(stored_name(args.study, args.study_name), args.storage)
    try:
        rep = replay_trial(study, args.replay, device=args.device, tolerance=args.tolerance)
    except UsageError:
        raise  # bad input takes the commands' error path: one line, exit code 2
    except TrainerError as e:  # the replay diverged or ran out of memory: not what was stored
        print(f"MISMATCH: the replay failed: {e}", file=sys.stderr)
        return 1
    print("\n".join(rep.lines()))
    return 0 if rep.matches else 1


def _train(cfg: TrainConfig, report: Any, threads: int):
    """Train with the trial's thread count and deterministic mode, then put both back."""
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    try:
        return train(cfg, report=report)
    except UsageError as e:  # e.g. the corpus file is gone
        raise HPOError(f"cannot replay: {e}") from None
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
