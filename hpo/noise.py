"""Seed noise: the incumbent trained again with other seeds while a study tunes, the winner
chosen on its re-evaluations compared on the seeds they share, the trials that may still be the
best, and a rule that ends a study once its gains fall below that noise.

Re-evaluations are trials of a companion study, "<study>:seeds", in the same storage: the
search's sampler and pruner never see them, --trials does not count them, and the dashboard
shows them as a study of their own (parameters, curve, record and manifest like any trial's).
Each one's record names the trial it re-evaluates and its seed index k (it trains with
train.seed + k; k = 0 is the search trial itself), so re-evaluations of different trials are
paired by seed: seed k gives every config the same initial weights and data order.

How trials are compared (`SeedNoise`), as SMAC races its incumbents over seeds:
- A trial's own run (k = 0) is the draw the search selected it on, the luckiest of many on a
  flat objective, so a re-evaluated trial is judged on its re-evaluations alone (k >= 1).
- Trials are compared on the seeds they share: an additive fit (trial + seed, least squares)
  takes out the luck a seed gives every config alike; with the same seeds, that is the plain
  paired comparison of their means.
- The incumbent is the trial that leads the search on seed 0 (as a single-seed study would
  choose) until it is re-evaluated; from then on the re-evaluated trials are compared on their
  re-evaluations, and a trial with its own run alone takes over only by beating every one of
  them on seed 0, the one seed it shares with them (and is then re-evaluated next). So the
  choice differs from a single-seed study's where the seed-0 leader's re-evaluations show
  another trial is better. The best trial not yet re-evaluated is the challenger, re-run while
  the share allows: the likeliest to take over, and each re-evaluated trial measures the noise.
- Tied (`SeedNoise.tied`): the re-evaluated trials that no other beats beyond the noise, in a
  one-sided paired t-test at 5% split over the comparisons (Bonferroni): the set holds the truly
  best re-evaluated trial with at least 95% probability, though the best was picked among many.

What gets re-evaluated (`next_reevaluation`): after a search trial completes, a trial whose
re-evaluations have begun gets all of them, then the incumbent, then the challenger, while the
re-evaluations' compute stays within noise.max_share of all the compute the study has spent.

Two noises are measured from the re-evaluations: `sd`, how much one run moves with its seed
(pooled within-trial, what a user re-running a config sees), and `paired_sd`, what is left of it
between configs trained on the same seed (the additive fit's residual), the scale on which
trials are compared and the stop rule reads a gain.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import optuna
import scipy.sparse.csgraph
import scipy.stats
from optuna.trial import FrozenTrial, TrialState

from hpo.manifest import manifest_config
from hpo.record import DIVERGED, SURPLUS, TrialRecord
from hpo.storage import storage_of
from hpo.trainable import SEED_KEY

SUFFIX = ":seeds"
STOPPED = "hpo.stopped"  # study user attribute: why the study ended before its target
TIE_LEVEL = 0.95  # tied: holds the truly best re-evaluated trial with this probability
MIN_NOISE_DOF = 2  # a noise is estimated from at least this many degrees of freedom
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
class SeedFit:
    """The additive fit value = trial + seed over the re-evaluations (seed index 1 and up)."""

    adjusted: dict[int, float]  # a trial's mean with the seeds' shared luck taken out
    sd: float | None  # the residual sd: one run's noise between configs on the same seed
    dof: int
    # what the standard error of a difference of two adjusted means needs
    trials: list[int] = field(default_factory=list, repr=False, compare=False)
    _row_space: np.ndarray = field(
        default_factory=lambda: np.zeros((0, 0)), repr=False, compare=False
    )
    _inverse: np.ndarray = field(
        default_factory=lambda: np.zeros((0, 0)), repr=False, compare=False
    )

    def difference_se(self, a: int, b: int) -> float | None:
        """The standard error of adjusted[a] - adjusted[b]; None before the sd is measured, or
        where no shared seed connects them (directly or through other trials)."""
        if self.sd is None:
            return None
        contrast = np.zeros(self._inverse.shape[0])
        contrast[self.trials.index(a)], contrast[self.trials.index(b)] = 1.0, -1.0
        # estimable only if it is a combination of the fit's rows
        if not np.allclose(contrast @ self._row_space, contrast, atol=1e-8):
            return None
        return self.sd * math.sqrt(max(float(contrast @ self._inverse @ contrast), 0.0))


def fit_seeds(again: dict[int, dict[int, float]]) -> SeedFit:
    """Least squares of value = trial effect + seed effect over `again` (trial -> {seed index:
    value}, re-evaluations only). A trial's adjusted mean is its effect plus the seeds' mean
    effect: its plain mean where it has every seed, and comparable across trials where not."""
    again = {n: {k: v for k, v in s.items() if math.isfinite(v)} for n, s in again.items()}
    trials = sorted(n for n, seeds in again.items() if seeds)
    seeds = sorted({k for n in trials for k in again[n]})
    rows = [(n, k, v) for n in trials for k, v in sorted(again[n].items())]
    if not rows:
        return SeedFit({}, None, 0)
    design = np.zeros((len(rows), len(trials) + len(seeds)))
    for r, (n, k, _) in enumerate(rows):
        design[r, trials.index(n)] = design[r, len(trials) + seeds.index(k)] = 1.0
    y = np.array([v for *_, v in rows])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    dof = len(rows) - int(np.linalg.matrix_rank(design))
    sd = math.sqrt(float(residual @ residual) / dof) if dof >= MIN_NOISE_DOF else None
    # a trial's effect is known up to a shift shared by the trials and seeds its seeds connect
    # it to; adding the mean effect of those seeds removes it (and gives the plain mean where
    # the trial has every one of them)
    # the graph of trials and seeds (a column each) joined where a run links them
    _, component = scipy.sparse.csgraph.connected_components(design.T @ design, directed=False)
    of_trial, of_seed = component[: len(trials)], component[len(trials) :]
    seed_effects = coef[len(trials) :]
    adjusted = {
        n: float(coef[i] + seed_effects[of_seed == of_trial[i]].mean())
        for i, n in enumerate(trials)
    }
    row_space = np.linalg.pinv(design) @ design  # projects a contrast onto what is estimable
    return SeedFit(adjusted, sd, dof, trials, row_space, np.linalg.pinv(design.T @ design))


@dataclass(frozen=True)
class SeedNoise:
    """Every trial's values by seed index, and what they say together (see the module's
    docstring for how trials are compared)."""

    values: dict[int, dict[int, float]]  # trial number -> {seed index: value}
    minimize: bool
    sd: float | None  # pooled within-trial standard deviation; None: not measured yet
    dof: int  # its degrees of freedom
    reevaluated: int = 0  # trials with more than one seed
    fit: SeedFit = field(default_factory=lambda: SeedFit({}, None, 0), repr=False)
    diverged: frozenset[int] = frozenset()  # a re-evaluation's loss blew up: ranked last

    @property
    def paired_sd(self) -> float | None:
        """One run's noise between configs trained on the same seed; None: not measured yet."""
        return self.fit.sd

    def again(self, number: int) -> dict[int, float]:
        """A trial's re-evaluations: its values but for its own run."""
        return {k: v for k, v in self.values[number].items() if k > 0}

    def mean(self, number: int) -> float:
        """The mean over its re-evaluations; a trial without any: its own run."""
        again = self.again(number) or self.values[number]
        return sum(again.values()) / len(again)

    def n_seeds(self, number: int) -> int:
        """The runs `mean` is over."""
        return len(self.again(number)) or 1

    def ranked(self) -> list[int]:
        """Trial numbers, the incumbent first: a trial with its own run alone that beats every
        re-evaluated trial on seed 0 (the one seed they share: it leads the search, as a
        single-seed study would choose it), then the re-evaluated trials by their adjusted
        means, then the other trials by their own runs; last, the trials that diverged on
        another seed."""
        sign = 1.0 if self.minimize else -1.0
        stable = [n for n in sorted(self.values) if n not in self.diverged]
        own = {n: sign * self.values[n][0] for n in stable}
        measured = [n for n in stable if n in self.fit.adjusted]
        lead = min((own[n] for n in measured), default=math.inf)
        leaders = sorted((n for n in stable if n not in measured and own[n] < lead), key=own.get)
        # compared on the seeds they share; more seeds first among equals (sorted: stable)
        adjusted = sorted(
            measured, key=lambda n: (sign * self.fit.adjusted[n], -len(self.again(n)))
        )
        rest = sorted((n for n in stable if n not in measured and own[n] >= lead), key=own.get)
        return [*leaders, *adjusted, *rest, *sorted(self.diverged & self.values.keys())]

    @property
    def best(self) -> int | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def challenger(self) -> int | None:
        """Once the incumbent has been re-evaluated: the best trial with its own run alone
        (None if there is none). Being a challenger sends compute (its re-evaluations, which
        also measure the noise), it does not choose."""
        best = self.best
        if best is None or not self.again(best):
            return None
        single = [n for n in self.ranked() if not self.again(n)]
        return single[0] if single else None

    def tied(self) -> list[int]:
        """The best trial, then every re-evaluated trial that no other beats beyond the seed
        noise on their shared seeds (one-sided paired t-tests at 1 - TIE_LEVEL, Bonferroni over
        the others): the truly best re-evaluated trial is in it with TIE_LEVEL probability.
        The best alone until the paired noise is measured. (A best that leads on its own run
        alone is not compared: it heads the set, then the re-evaluated trials so chosen.)"""
        best = self.best
        if best is None:
            return []
        measured = [n for n in self.ranked() if n in self.fit.adjusted and n not in self.diverged]
        if self.paired_sd is None or len(measured) < 2:
            return [best]
        t = float(scipy.stats.t.ppf(1 - (1 - TIE_LEVEL) / (len(measured) - 1), self.fit.dof))
        sign = 1.0 if self.minimize else -1.0
        adjusted = self.fit.adjusted

        def beaten(n: int) -> bool:
            for other in measured:
                se = self.fit.difference_se(n, other) if other != n else None
                if se is not None and sign * (adjusted[n] - adjusted[other]) > t * se:
                    return True
            return False

        return [best, *(n for n in measured if n != best and not beaten(n))]


def estimate(
    values: dict[int, dict[int, float]], *, minimize: bool, diverged: Iterable[int] = ()
) -> SeedNoise:
    """Pool the within-trial variance of the re-evaluations (seed index 1 and up) of every
    trial that has two or more of them, and fit them by trial and seed (`fit_seeds`).
    `values` holds each trial's own run (seed index 0); `diverged`: trials whose loss blew up
    on another seed, ranked last."""
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
    fit = fit_seeds({n: {k: v for k, v in s.items() if k > 0} for n, s in values.items()})
    return SeedNoise(values, minimize, sd, dof, reevaluated, fit, frozenset(diverged))


def estimate_runs(runs: Iterable[Run], *, minimize: bool) -> SeedNoise:
    """`estimate` of a study's finished runs (`runs_of`)."""
    runs = list(runs)
    diverged = {r.trial for r in runs if r.reevaluation and r.diverged and r.trial is not None}
    return estimate(seed_values(runs), minimize=minimize, diverged=diverged)


@dataclass(frozen=True)
class Run:
    """One finished training run of a study or its companion, in the order they finished."""

    tokens: int  # compute it spent
    trial: int | None = None  # the search trial whose config it trained (None: no value)
    seed_index: int = 0
    value: float | None = None  # None: pruned, failed, or still running
    reevaluation: bool = False
    diverged: bool = False  # its loss blew up (a re-evaluation: the config is unstable)


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
            diverged = record.stop_reason == DIVERGED
            run = Run(_tokens(t), record.reevaluates, record.seed_index, value, True, diverged)
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
    return estimate_runs(runs_of(study, seeds_study), minimize=minimize)


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

    A trial whose re-evaluations have begun gets all of them first (the incumbent's rank
    order), so that every re-evaluated trial measures the noise and a challenger can take over;
    then the incumbent; then the challenger (`SeedNoise.challenger`). `taken`: every (trial,
    seed) ever started, failed ones included; `in_flight`: those queued or running, whose
    trial waits for them."""
    if seeds < 1 or noise.best is None:
        return None
    taken, in_flight = set(taken), set(in_flight)
    busy = {trial for trial, _ in in_flight}
    begun = {trial for trial, _ in taken} | {n for n, s in noise.values.items() if len(s) > 1}

    def missing(n: int) -> list[int]:
        return [k for k in range(1, seeds + 1) if k not in noise.values[n] and (n, k) not in taken]

    # no more compute on a config that diverged on another seed
    idle = [n for n in noise.ranked() if n not in busy and n not in noise.diverged]
    candidates = [n for n in idle if n in begun and missing(n)]
    candidates += [n for n in (noise.best, noise.challenger()) if n in idle and missing(n)]
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
    """The stop rule's reading: how much the best search run improved over the last third of
    the compute, against the noise of a difference between two configs' runs on one seed."""

    stop: bool
    improvement: float  # of the best search run over the window (positive: better now)
    noise_sd: float  # of that difference: sqrt(2) paired sds
    tokens: int  # compute spent by now
    since_tokens: int  # the start of the window: two thirds of it
    best: int
    trials: int  # search trials finished

    def describe(self) -> str:
        return (
            f"the best trial improved by {self.improvement:.4f} over the last third "
            f"of the compute ({self.since_tokens:,} to {self.tokens:,} tokens or steps, "
            f"{self.trials} trials), {'less' if self.stop else 'not less'} than the seed "
            f"noise of a difference between two configs on one seed (sd {self.noise_sd:.4f})"
        )

    def to_json(self) -> dict[str, Any]:
        return {"reason": "gains below seed noise", **asdict(self), "why": self.describe()}


def gains_below_noise(runs: Sequence[Run], *, minimize: bool) -> StopDecision | None:
    """Stop when the best search run improved over the last third of the compute spent by
    less than one sd of the difference between two configs' runs on the same seed.

    The gain is read on the search trials' own runs: each trained with the study's seed, so the
    luck that seed gives every config alike cancels between them, and the gain is set against
    the noise that is left (the paired sd, times sqrt(2) for a difference of two runs), not
    against how much one run moves with its seed, which holds that shared luck as well. On a
    flat objective the best of N runs keeps creeping down by a fraction of an sd (order
    statistics); a real improvement moves it by more than the noise.

    None until that can be judged: the noise measured and at least MIN_TRIALS_TO_STOP search
    trials finished."""
    trials = sum(not r.reevaluation for r in runs)
    now = estimate_runs(runs, minimize=minimize)
    if trials < MIN_TRIALS_TO_STOP or now.paired_sd is None or now.best is None:
        return None
    noise_sd = math.sqrt(2) * now.paired_sd
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
        stop=improvement < noise_sd,
        improvement=improvement,
        noise_sd=noise_sd,
        tokens=total,
        since_tokens=since,
        best=now.best,
        trials=trials,
    )


@dataclass(frozen=True)
class NoiseReport:
    """What the summary, hpo.analyze and hpo.validate say about a study's seed noise."""

    best: int
    mean: float  # over its re-evaluations; its own run where it has none yet
    n_seeds: int  # the runs in that mean
    values: list[float]  # those runs, by seed index
    sd: float | None  # one run's sd across seeds
    reevaluated: int  # trials
    runs: int  # re-evaluation runs
    share: float  # of the study's compute
    tied: list[int] = field(default_factory=list)
    stopped: dict[str, Any] | None = None
    own: float | None = None  # the best's own run, left out of its mean
    paired_sd: float | None = None  # between configs trained on one seed

    def lines(self) -> list[str]:
        seeds = ", ".join(f"{v:.4f}" for v in self.values)
        if self.own is None:
            best = f"best: trial {self.best}, value {self.mean:.4f} (not re-evaluated yet)"
        else:
            best = (
                f"best: trial {self.best}, mean {self.mean:.4f} over its {self.n_seeds} "
                f"re-evaluation(s) ({seeds}; its own run, {self.own:.4f}, is left out: the "
                "search chose it on that draw)"
            )
        noise = "not measured yet" if self.sd is None else f"sd {self.sd:.4f}"
        if self.paired_sd is not None:
            noise += f", between configs on one seed {self.paired_sd:.4f}"
        out = [
            f"{best}; seed noise {noise} ({self.reevaluated} trials re-evaluated, "
            f"{self.runs} runs, {self.share:.1%} of the compute)"
        ]
        if self.paired_sd is not None:
            others = [n for n in self.tied if n != self.best]
            out.append(
                "tied with it within noise (no trial beats them beyond it on the seeds they "
                f"share: the truly best re-evaluated trial is among these at {TIE_LEVEL:.0%}): "
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
    noise = estimate_runs(runs, minimize=study.direction.name == "MINIMIZE")
    best = noise.best
    if best is None:
        return None
    again = noise.again(best)
    return NoiseReport(
        best=best,
        mean=noise.mean(best),
        n_seeds=noise.n_seeds(best),
        values=[again[k] for k in sorted(again)] or [noise.values[best][0]],
        sd=noise.sd,
        reevaluated=noise.reevaluated,
        runs=sum(r.reevaluation for r in runs),
        share=spent(runs).share,
        tied=noise.tied(),
        stopped=study.user_attrs.get(STOPPED),
        own=noise.values[best][0] if again else None,
        paired_sd=noise.paired_sd,
    )


def unmeasured(study: optuna.Study, seeds: int, max_share: float) -> str | None:
    """For a study told to re-evaluate (noise.seeds) whose paired seed noise (what ties and
    the stop rule read) is not measured yet: why, when it is the share of compute, and what
    share would measure it. None otherwise."""
    measured = report(study)
    if seeds < 1 or (measured is not None and measured.paired_sd is not None):
        return None
    runs = runs_of(study, find_seeds_study(study))
    used = spent(runs)
    best = estimate_runs(runs, minimize=study.direction.name == "MINIMIZE").best
    if best is None:
        return None
    if seeds < 2:
        return "seed noise not measured: noise.seeds 1 cannot (a trial needs 2 re-evaluations)"
    full = TrialRecord.of(study.get_trials(deepcopy=False)[best]).max_compute or 0
    # m trials with the same `seeds` re-evaluations leave (m - 1)(seeds - 1) degrees of
    # freedom once each trial's and each seed's effect is fitted
    trials = 1 + math.ceil(MIN_NOISE_DOF / (seeds - 1))
    needed = trials * seeds * full
    share = needed / (used.search + needed) if used.search + needed else 0.0
    if share <= max_share:
        return None  # it will measure it as the study goes on
    return (
        f"seed noise not measured: the re-evaluations that measure it ({trials} trials' "
        f"{seeds} seeds) take {share:.0%} of this study's compute, more than noise.max_share "
        f"{max_share:.0%} allows; raise it to {math.ceil(share * 20) / 20:.2f}, or run more "
        "trials"
    )


def _tokens(t: FrozenTrial) -> int:
    """Compute: tokens where the trainer counts them, else steps (TrialRecord.compute)."""
    return TrialRecord.of(t).compute
