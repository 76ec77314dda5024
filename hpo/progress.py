"""The live display of a study (a bar with best, pruned and failed counts, one line per finished
trial) and the summary printed at the end."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from hpo.objective import COUNTED


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
    reason = t.user_attrs.get("fail_reason", "failed")
    return f"trial {t.number:>3} failed: {reason}  {params}"


def summary(study: optuna.Study, *, target: int, wall_time_s: float) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    lines = [
        f"study {study.study_name!r}: {counts['complete'] + counts['pruned']}/{target} trials "
        f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}) in {wall_time_s:.0f}s"
    ]
    best = best_trial(study, trials)
    if best is None:
        lines.append("no trial has completed yet")
    else:
        lines.append(f"best: trial {best.number}, value {best.value:.4f}")
        lines.extend(f"  {k} = {_fmt(v)}" for k, v in best.params.items())
    counted = [t for t in trials if t.state in COUNTED and "steps" in t.user_attrs]
    if counted:
        trained = sum(t.user_attrs["steps"] for t in counted)
        full = sum(t.user_attrs["max_steps"] for t in counted)
        lines.append(
            f"compute: {trained:,} steps trained of {full:,} without pruning "
            f"({1 - trained / full:.0%} saved by pruning)"
        )
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
