"""Seed noise: the incumbent trained again with other seeds while a study tunes, the winner
chosen on its mean over seeds, the trials tied with it within noise, and a rule that ends a
study once its gains fall below that noise.

Re-evaluations are trials of a companion study, "<study>:seeds", in the same storage: the
search's sampler and pruner never see them, --trials does not count them, and the dashboard
shows them as a study of their own (parameters, curve, record and manifest like any trial's).
Each one's record names the trial it re-evaluates and its seed index k (it trains with
train.seed + k; k = 0 is the search trial itself), so re-evaluations of different trials are
paired by seed.

What gets re-evaluated (`next_reevaluation`): after a search trial completes, the incumbent (the
best mean over seeds; a trial with one seed by its value) gets noise.seeds more runs, one after
another, while the re-evaluations' compute stays within noise.max_share of all the compute the
study has spent. A lucky trial whose mean falls behind loses the incumbency, and the next one is
re-evaluated in turn (racing, as SMAC races incumbents over seeds).

The seed noise is the pooled within-trial standard deviation of the re-evaluations alone: a
trial's own run is the draw it was selected for (the luckiest of its config, by up to two sd on
a flat objective), which would inflate it. So a trial tells the noise from its second
re-evaluation on (noise.seeds of 2 or more).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
import scipy.stats
from optuna.trial import FrozenTrial, TrialState

from hpo.manifest import manifest_config
from hpo.record import SURPLUS, TrialRecord
from hpo.storage import storage_of
from hpo.trainable import SEED_KEY

SUFFIX = ":seeds"
STOPPED = "hpo.stopped"  # study user attribute: why the study ended before its target
TIE_LEVEL = 0.975  # tied: means that differ by less than a 95% t-interval's half-width
MIN_NOISE_DOF = 2  # the noise is estimated from at least this many degrees of freedom
MIN_TRIALS_TO_STOP = 10  # and the stop rule waits for at least this many search trials


def seeds_study_name(name: str) -> str:
    return f"{name}{SUFFIX}"


def open_seeds_study(study: optuna.Study) -> optuna.Study:
    """The companion study of `study`'s re-evaluations, created on first use (by any worker)."""
    return optuna.create_study(
        study_name=seeds_study_name(study.study_name),
        storage=storage_of(study),  # the companion lives in the same storage
        direction=study.direction,
        sampler=optuna.samplers.RandomSampler(),  # every parameter is fixed when enqueued
        pruner=optuna.pruners.NopPruner(),  # a re-evaluation trains to the end
        load_if_exists=True,
    )


def reevaluation_config(
    seeds_study: optuna.Study, record: TrialRecord, *, fallback: dict[str, Any]
) -> dict[str, Any]:
    """What a re-evaluation trains: the resolved config of the trial it re-evaluates (from its
    manifest: the study's settings of that run, not today's --set) with train.seed + k; or,
    for a trial without a manifest, `fallback` (its parameters on today's settings) so."""
    study = optuna.load_study(
        study_name=seeds_study.study_name.removesuffix(SUFFIX), storage=storage_of(seeds_study)
    )
    origin = study.get_trials(deepcopy=False)[record.reevaluates]
    manifest = TrialRecord.of(origin).manifest
    config = manifest_config(manifest) if manifest else fallback
    return {**config, SEED_KEY: int(config.get(SEED_KEY, 0)) + record.seed_index}


def find_seeds_study(study: optuna.Study) -> optuna.Study | None:
    """The companion study, or None when the study has never re-evaluated a trial."""
    try:
        return optuna.load_study(
            study_name=seeds_study_name(study.study_name), storage=storage_of(study)
        )
    except KeyError:
        return None


@dataclass(frozen=True)
class SeedNoise:
    """Every trial's values by seed index, and what they say together."""

    values: dict[int, dict[int, float]]  # trial number -> {seed index: value}
    minimize: bool
    sd: float | None  # pooled within-trial standard deviation; None: not measured yet
    dof: int  # its degrees of freedom
    reevaluated: int = 0  # trials with more than one seed

    def mean(self, number: int) -> float:
        seeds = self.values[number]
        return sum(seeds.values()) / len(seeds)

    def n_seeds(self, number: int) -> int:
        return len(self.values[number])

    def ranked(self) -> list[int]:
        """Trial numbers, best mean first (more seeds first among equal means)."""
        sign = 1.0 if self.minimize else -1.0
        return sorted(self.values, key=lambda n: (sign * self.mean(n), -self.n_seeds(n), n))

    @property
    def best(self) -> int | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def tied(self) -> list[int]:
        """The best trial and every trial whose mean is within noise of its mean (best first).
        Without a noise estimate, the best trial alone."""
        best = self.best
        if best is None:
            return []
        if self.sd is None:
            return [best]
        # the noise rests on few re-runs early on: Student's t for its degrees of freedom
        t = float(scipy.stats.t.ppf(TIE_LEVEL, self.dof))
        out = []
        for n in self.ranked():
            gap = abs(self.mean(n) - self.mean(best))
            half = t * self.sd * math.sqrt(1 / self.n_seeds(n) + 1 / self.n_seeds(best))
            if gap <= half:
                out.append(n)
        return out


def estimate(values: dict[int, dict[int, float]], *, minimize: bool) -> SeedNoise:
    """Pool the within-trial variance of the re-evaluations (seed index 1 and up) of every
    trial that has two or more of them."""
    ss, dof, reevaluated = 0.0, 0, 0
    for seeds in values.values():
        reevaluated += len(seeds) > 1
        again = [v for k, v in seeds.items() if k > 0]
        if len(again) < 2:
            continue
        mean = sum(again) / len(again)
        ss += sum((v - mean) ** 2 for v in again)
        dof += len(again) - 1
    sd = math.sqrt(ss / dof) if dof >= MIN_NOISE_DOF else None
    return SeedNoise(values, minimize, sd, dof, reevaluated)


@dataclass(frozen=True)
class Run:
    """One finished training run of a study or its companion, in the order they finished."""

    tokens: int  # compute it spent
    trial: int | None = None  # the search trial whose config it trained (None: no value)
    seed_index: int = 0
    value: float | None = None  # None: pruned, failed, or still running
    reevaluation: bool = False


def runs_of(study: optuna.Study, seeds_study: optuna.Study | None) -> list[Run]:
    """Every finished run of the study and of its re-evaluations, by completion time."""
    timed: list[tuple[Any, Run]] = []
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished():
            value = t.value if t.state == TrialState.COMPLETE else None
            timed.append((t.datetime_complete, Run(_tokens(t), t.number, 0, value)))
    for t in seeds_study.get_trials(deepcopy=False) if seeds_study is not None else []:
        record = TrialRecord.of(t)
        if t.state.is_finished() and pair_of(t) is not None:
            value = t.value if t.state == TrialState.COMPLETE else None
            run = Run(_tokens(t), record.reevaluates, record.seed_index, value, reevaluation=True)
            timed.append((t.datetime_complete, run))
    timed.sort(key=lambda pair: pair[0])
    return [run for _, run in timed]


def seed_values(runs: Iterable[Run]) -> dict[int, dict[int, float]]:
    values: dict[int, dict[int, float]] = {}
    for run in runs:
        if run.value is not None and run.trial is not None and math.isfinite(run.value):
            values.setdefault(run.trial, {})[run.seed_index] = run.value
    # a re-evaluation of a trial whose own run did not complete (a retried one) stands alone
    return {n: seeds for n, seeds in values.items() if 0 in seeds}


def measure(study: optuna.Study, seeds_study: optuna.Study | None = None) -> SeedNoise:
    """The study's seed noise as stored now (its companion found if not given)."""
    seeds_study = seeds_study if seeds_study is not None else find_seeds_study(study)
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    return estimate(seed_values(runs_of(study, seeds_study)), minimize=minimize)


@dataclass(frozen=True)
class Spent:
    """Compute (tokens) of finished runs: the search's, the re-evaluations'."""

    search: int
    reevaluations: int

    @property
    def share(self) -> float:
        total = self.search + self.reevaluations
        return self.reevaluations / total if total else 0.0


def spent(runs: Sequence[Run]) -> Spent:
    return Spent(
        search=sum(r.tokens for r in runs if not r.reevaluation),
        reevaluations=sum(r.tokens for r in runs if r.reevaluation),
    )


def next_reevaluation(
    noise: SeedNoise,
    used: Spent,
    *,
    seeds: int,
    max_share: float,
    full_tokens: int,
    taken: Iterable[tuple[int, int]] = (),
    in_flight: Iterable[tuple[int, int]] = (),
) -> tuple[int, int] | None:
    """(trial, seed index) to train next, or None: nothing is due, or one more full run would
    take re-evaluations past `max_share` of the compute.

    A trial whose re-evaluations have begun gets all of them first (best mean first), so that
    every re-evaluated trial measures the noise; then the incumbent. `taken`: every (trial,
    seed) ever started, failed ones included; `in_flight`: those queued or running, whose
    trial waits for them."""
    if seeds < 1 or noise.best is None:
        return None
    taken, in_flight = set(taken), set(in_flight)
    busy = {trial for trial, _ in in_flight}
    begun = {trial for trial, _ in taken} | {n for n, s in noise.values.items() if len(s) > 1}

    def missing(n: int) -> list[int]:
        return [k for k in range(1, seeds + 1) if k not in noise.values[n] and (n, k) not in taken]

    candidates = [n for n in noise.ranked() if n in begun and n not in busy and missing(n)]
    if noise.best not in busy and missing(noise.best):
        candidates.append(noise.best)
    if not candidates:
        return None
    planned = used.reevaluations + full_tokens * (len(in_flight) + 1)
    if planned > max_share * (used.search + planned):
        return None
    return candidates[0], missing(candidates[0])[0]


def reevaluations(
    seeds_study: optuna.Study, states: tuple[TrialState, ...] | None = None
) -> set[tuple[int, int]]:
    """(trial, seed index) of the companion's re-evaluations (in these states), but for the
    duplicates that gave way to another (hpo.reevaluation)."""
    pairs = (pair_of(t) for t in seeds_study.get_trials(deepcopy=False, states=states))
    return {pair for pair in pairs if pair is not None}


def pair_of(t: FrozenTrial) -> tuple[int, int] | None:
    """(trial, seed index) that a companion trial re-evaluates; None for a duplicate."""
    record = TrialRecord.of(t)
    if record.reevaluates is None or record.stop_reason == SURPLUS:
        return None
    return record.reevaluates, record.seed_index


@dataclass(frozen=True)
class StopDecision:
    """The stop rule's reading: how much the best mean improved over the last third of the
    compute, against the seed noise."""

    stop: bool
    improvement: float  # of the best search run over the window (positive: better now)
    noise_sd: float
    tokens: int  # compute spent by now
    since_tokens: int  # the start of the window: two thirds of it
    best: int
    trials: int  # search trials finished

    def describe(self) -> str:
        return (
            f"the best trial improved by {self.improvement:.4f} over the last third "
            f"of the compute ({self.since_tokens:,} to {self.tokens:,} tokens or steps, "
            f"{self.trials} trials), {'less' if self.stop else 'not less'} than the seed "
            f"noise (sd {self.noise_sd:.4f})"
        )

    def to_json(self) -> dict[str, Any]:
        return {"reason": "gains below seed noise", **asdict(self), "why": self.describe()}


def gains_below_noise(runs: Sequence[Run], *, minimize: bool) -> StopDecision | None:
    """Stop when the best search run improved by less than one seed-noise sd over the last
    third of the compute spent.

    The gain is read on the search trials' own runs: each trained with the study's seed, so two
    of them differ by their configs alone, while a mean over seeds set against a lone run (or
    against a mean over fewer seeds) differs by the luck of the draw as well. On a flat
    objective the best of N runs keeps creeping down by a fraction of an sd (order statistics);
    a real improvement moves it by more than the noise.

    None until that can be judged: the noise measured and at least MIN_TRIALS_TO_STOP search
    trials finished."""
    trials = sum(not r.reevaluation for r in runs)
    now = estimate(seed_values(runs), minimize=minimize)
    if trials < MIN_TRIALS_TO_STOP or now.sd is None or now.best is None:
        return None
    total = sum(r.tokens for r in runs)
    since = total * 2 // 3
    sign = 1.0 if minimize else -1.0
    cumulative, then, best = 0, math.inf, math.inf
    for run in runs:
        cumulative += run.tokens
        if run.reevaluation or run.value is None or not math.isfinite(run.value):
            continue
        best = min(best, sign * run.value)
        if cumulative <= since:
            then = best
    if not math.isfinite(then):
        return None
    improvement = then - best
    return StopDecision(
        stop=improvement < now.sd,
        improvement=improvement,
        noise_sd=now.sd,
        tokens=total,
        since_tokens=since,
        best=now.best,
        trials=trials,
    )


@dataclass(frozen=True)
class NoiseReport:
    """What the summary, hpo.analyze and hpo.validate say about a study's seed noise."""

    best: int
    mean: float
    n_seeds: int
    values: list[float]
    sd: float | None
    reevaluated: int  # trials
    runs: int  # re-evaluation runs
    share: float  # of the study's compute
    tied: list[int] = field(default_factory=list)
    stopped: dict[str, Any] | None = None

    def lines(self) -> list[str]:
        seeds = ", ".join(f"{v:.4f}" for v in self.values)
        noise = (
            f"seed noise sd {self.sd:.4f}" if self.sd is not None else "seed noise not measured yet"
        )
        out = [
            f"best: trial {self.best}, mean {self.mean:.4f} over {self.n_seeds} seed(s) "
            f"({seeds}); {noise} ({self.reevaluated} trials re-evaluated, {self.runs} runs, "
            f"{self.share:.1%} of the compute)"
        ]
        if self.sd is not None:
            others = [n for n in self.tied if n != self.best]
            out.append(
                "tied with it within noise: "
                + (", ".join(f"trial {n}" for n in others) if others else "none")
            )
        if self.stopped:
            out.append(f"stopped early: {self.stopped['why']} (to run on: --no-stop-below-noise)")
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def report(study: optuna.Study) -> NoiseReport | None:
    """None for a study that has never re-evaluated a trial."""
    seeds_study = find_seeds_study(study)
    if seeds_study is None:
        return None
    runs = runs_of(study, seeds_study)
    noise = estimate(seed_values(runs), minimize=study.direction.name == "MINIMIZE")
    best = noise.best
    if best is None:
        return None
    return NoiseReport(
        best=best,
        mean=noise.mean(best),
        n_seeds=noise.n_seeds(best),
        values=[noise.values[best][k] for k in sorted(noise.values[best])],
        sd=noise.sd,
        reevaluated=noise.reevaluated,
        runs=sum(r.reevaluation for r in runs),
        share=spent(runs).share,
        tied=noise.tied(),
        stopped=study.user_attrs.get(STOPPED),
    )


def unmeasured(study: optuna.Study, seeds: int, max_share: float) -> str | None:
    """For a study told to re-evaluate (noise.seeds) whose seed noise is not measured yet:
    why, when it is the share of compute, and what share would measure it. None otherwise."""
    measured = report(study)
    if seeds < 1 or (measured is not None and measured.sd is not None):
        return None
    runs = runs_of(study, find_seeds_study(study))
    used = spent(runs)
    best = estimate(seed_values(runs), minimize=study.direction.name == "MINIMIZE").best
    if best is None:
        return None
    if seeds < 2:
        return "seed noise not measured: noise.seeds 1 cannot (a trial needs 2 re-evaluations)"
    full = TrialRecord.of(study.get_trials(deepcopy=False)[best]).max_compute or 0
    # a trial's `seeds` re-evaluations give seeds - 1 degrees of freedom of the noise
    needed = math.ceil(MIN_NOISE_DOF / (seeds - 1)) * seeds * full
    share = needed / (used.search + needed) if used.search + needed else 0.0
    if share <= max_share:
        return None  # it will measure it as the study goes on
    return (
        f"seed noise not measured: the re-evaluations that measure it take {share:.0%} of this "
        f"study's compute, more than noise.max_share {max_share:.0%} allows; raise it to "
        f"{math.ceil(share * 20) / 20:.2f}, or run more trials"
    )


def _tokens(t: FrozenTrial) -> int:
    """Compute: tokens where the trainer counts them, else steps (TrialRecord.compute)."""
    return TrialRecord.of(t).compute
