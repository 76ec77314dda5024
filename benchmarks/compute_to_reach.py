"""hpo's compute to reach plain Optuna's median final best, seeds pooled over several runs.

Each seed's fraction is the share of the budget after which hpo's row first reached the target;
its median over seeds is the statistic. The target, plain Optuna's median final best, is itself
an estimate from the same ten seeds, so the interval printed first resamples both arms together
by study seed (`hpo.validation.stats.paired_bootstrap_interval`): it carries the target's noise
as well as hpo's. Beside it, the fraction at fixed targets (plain Optuna's final best at its
quartiles), where the order-statistic interval of a median is exact. Values differ from machine
to machine in the last bits, so each run's seeds are measured against that run's own plain
Optuna and resampled within it (a stratum), then pooled.

    python benchmarks/compute_to_reach.py \\
        "benchmarks/results/zen3_builtin_plain.json:tpe+sha" \\
        "benchmarks/results/zen4_builtin_plain.json,benchmarks/results/zen4_builtin_combo.json:ROW"

Each argument: the --out files of one run (comma-separated), a colon, and the row of hpo's
configuration in them. Both rows hold the run's study seeds in the same order (the pairing).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# run as a script: this folder is on the path
from search_efficiency import merge_runs, steps_to_reach_each

from hpo.validation.stats import median_interval, paired_bootstrap_interval

PLAIN = "optuna-tpe+hyperband"
QUARTILES = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class PairedRun:
    """One benchmark run: per study seed, plain Optuna's final best and hpo's best-so-far curve."""

    plain_finals: np.ndarray
    curves: list[list[tuple[int, float]]]
    budget: int

    def fractions(self, targets: np.ndarray) -> np.ndarray:
        """(seeds, targets): the share of the budget after which each seed's curve first reached
        each target (inf: never)."""
        return np.stack([steps_to_reach_each(c, targets) / self.budget for c in self.curves])


def load(files: list[str], row: str) -> PairedRun:
    saved = [json.loads(Path(path).read_text()) for path in files]
    runs = merge_runs(saved)
    budgets = {out["budget_steps"] for out in saved}
    if len(budgets) != 1 or row not in runs or PLAIN not in runs:
        raise SystemExit(f"{files}: need one budget and the rows {row!r} and {PLAIN!r}")
    seeds = {
        name: [s for out in saved if name in out["runs"] for s in out["seeds"]]
        for name in (row, PLAIN)
    }
    if seeds[row] != seeds[PLAIN]:  # the pairing: seed by seed, in the files' order
        raise SystemExit(f"{files}: {row!r} ran seeds {seeds[row]}, {PLAIN!r} {seeds[PLAIN]}")
    plain = np.array([r["best"] for r in runs[PLAIN]], dtype=float)
    return PairedRun(plain, [r["curve"] for r in runs[row]], budgets.pop())


def median_fraction(runs: list[PairedRun]) -> float:
    """The statistic: the median over all pooled seeds of the share of the budget to reach
    their own run's plain Optuna median final best."""
    shares = [run.fractions(np.median(run.plain_finals, keepdims=True))[:, 0] for run in runs]
    return float(np.median(np.concatenate(shares)))


def bootstrap_interval(runs: list[PairedRun], seed: int = 0) -> tuple[float, float]:
    """95% interval of median_fraction, both arms resampled by study seed within each run."""

    def statistic(draws: list[np.ndarray]) -> np.ndarray:
        shares = []
        for run, index in zip(runs, draws, strict=True):
            targets = np.median(run.plain_finals[index], axis=1)  # one target per resample
            # (seeds, resamples) -> each resample's drawn seeds, against that resample's target
            shares.append(np.take_along_axis(run.fractions(targets).T, index, axis=1))
        return np.median(np.concatenate(shares, axis=1), axis=1)

    return paired_bootstrap_interval(statistic, [len(run.curves) for run in runs], seed=seed)


def at_fixed_targets(runs: list[PairedRun]) -> list[tuple[float, float, float, float]]:
    """Per quartile q of plain Optuna's final best (each run's own): q, the median share of the
    budget to reach it, and that median's exact 95% interval (the target held fixed)."""
    out = []
    for q in QUARTILES:
        shares = np.concatenate(
            [run.fractions(np.quantile(run.plain_finals, [q]))[:, 0] for run in runs]
        )
        out.append((q, float(np.median(shares)), *median_interval(shares)))
    return out


def describe(label: str, runs: list[PairedRun]) -> str:
    seeds = sum(len(run.curves) for run in runs)
    low, high = bootstrap_interval(runs)
    fixed = "; ".join(
        f"q{round(100 * q)} {m:.2f} [{lo:.2f}, {hi:.2f}]" for q, m, lo, hi in at_fixed_targets(runs)
    )
    return (
        f"{label}: {seeds} seeds, median {median_fraction(runs):.2f}, "
        f"[{low:.2f}, {high:.2f}] with both arms resampled by seed; "
        f"at plain Optuna's final-best quartiles (target fixed): {fixed}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="FILES:ROW")
    args = parser.parse_args()
    runs = []
    for spec in args.runs:
        files, _, row = spec.partition(":")
        runs.append(load(files.split(","), row))
        print(describe(f"{files} [{row}]", runs[-1:]))
    if len(runs) > 1:
        print(describe("pooled", runs))


if __name__ == "__main__":
    main()
