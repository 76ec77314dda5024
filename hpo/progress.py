"""The live display of a study (a bar with best, pruned and failed counts, one line per finished
trial) and the summary printed at the end."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from hpo import noise
from hpo.objective import COUNTED
from hpo.record import TrialRecord, pruning_stats


class Progress:
    """Fed the study's trials (after each trial, or by polling); writes only what is new."""

    def __init__(
        self, target: int, trials: Sequence[FrozenTrial], *, metric: str, enabled: bool = True
    ) -> None:
        self.metric = metric
        self.seen = {t.number for t in trials if t.state.is_finished()}
        done = sum(t.state in COUNTED for t in trials)
        self.bar = tqdm(
            total=target,
            initial=min(done, target),
            unit="trial",
            desc="trials",
            disable=not enabled,
        )

    def update(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> None:
        for t in sorted(
            (t for t in trials if t.state.is_finished() and t.number not in self.seen),
            key=lambda t: t.number,
        ):
            self.seen.add(t.number)
            self.bar.write(describe(t, self.metric), file=sys.stderr)
        counts = Counter(t.state for t in trials)
        self.bar.n = min(counts[TrialState.COMPLETE] + counts[TrialState.PRUNED], self.bar.total)
        postfix = {"pruned": counts[TrialState.PRUNED], "failed": counts[TrialState.FAIL]}
        best = best_trial(study, trials)
        if best is not None:
            postfix = {"best": f"{best.value:.4f}", **postfix}
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def best_trial(study: optuna.Study, trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
    return pick(complete, key=lambda t: t.value)


def describe(t: FrozenTrial, metric: str) -> str:
    params = "  ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
    if t.state == TrialState.COMPLETE:
        return f"trial {t.number:>3} complete  {metric} {t.value:.4f}  {params}"
    if t.state == TrialState.PRUNED:
        step = t.last_step if t.last_step is not None else 0
        value = t.intermediate_values.get(step, float("nan"))
        return f"trial {t.number:>3} pruned at step {step}  {metric} {value:.4f}  {params}"
    reason = TrialRecord.of(t).fail_reason or "failed"
    return f"trial {t.number:>3} failed: {reason}  {params}"


def summary(study: optuna.Study, *, target: int, wall_time_s: float) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    lines = [
        f"study {study.study_name!r}: {counts['complete'] + counts['pruned']}/{target} trials "
        f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}) in {wall_time_s:.0f}s"
    ]
    best = best_trial(study, trials)
    seeds = noise.report(study)
    if best is None:
        lines.append("no trial has completed yet")
    elif seeds is not None:
        # chosen on its mean over seeds (hpo.noise), not on its luckiest run
        lines.extend(seeds.lines())
        lines.extend(f"  {k} = {_fmt(v)}" for k, v in trials[seeds.best].params.items())
    else:
        lines.append(f"best: trial {best.number}, value {best.value:.4f}")
        lines.extend(f"  {k} = {_fmt(v)}" for k, v in best.params.items())
    settings = study.user_attrs.get("hpo.spec", {}).get("noise") or {}
    why = noise.unmeasured(study, settings.get("seeds", 0), settings.get("max_share", 0.15))
    if why and best is not None:
        lines.append(why)
    spent = pruning_stats(trials)
    if spent["without_pruning"]:
        lines.append(
            f"compute: {spent['trained']:,} {spent['unit']} trained of "
            f"{spent['without_pruning']:,} without pruning ({spent['saved']:.0%} saved by pruning)"
        )
    fit = gpu_fit(trials)
    if fit:
        lines.append(fit)
    return "\n".join(lines)


# what each worker process holds on its GPU besides its tensors (the CUDA context, cuBLAS
# workspaces): about half a GiB on recent GPUs
CUDA_CONTEXT_MB = 512


def gpu_fit(trials: Sequence[FrozenTrial]) -> str | None:
    """How many trials of the largest size seen share one GPU: the most memory a trial took
    (system/peak_mem_mb at its last evaluation) against the GPU's total."""
    peaks = []
    for t in trials:
        record = TrialRecord.of(t)
        total = (record.manifest or {}).get("device_memory_mb")
        peak = record.metrics.get("system/peak_mem_mb")
        if total and peak:
            peaks.append((peak, total, t.number, record.manifest.get("device_name", "GPU")))
    if not peaks:
        return None
    peak, total, number, name = max(peaks)
    fits = int(total // (peak + CUDA_CONTEXT_MB))
    return (
        f"GPU memory: at most {peak:,.0f} MiB per trial (trial {number}); a {total:,.0f} MiB "
        f"{name} fits about {fits} such trials, each process with its CUDA context "
        f"(--trials-per-gpu {fits})"
    )


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
