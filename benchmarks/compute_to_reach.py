"""hpo's compute to reach plain Optuna's median final best, seeds pooled over several runs.

One run of search_efficiency.py (10 study seeds) places the median of this fraction only
roughly: its 95% interval spans a third of the budget. Runs on other machines, or of other
seeds, add seeds; values differ from machine to machine in the last bits, so each run's seeds
are measured against that run's own plain Optuna median, then pooled.

    python benchmarks/compute_to_reach.py \
        "benchmarks/results/zen3_builtin_plain.json:tpe+sha" \
        "benchmarks/results/zen4_builtin_plain.json,benchmarks/results/zen4_builtin_combo.json:ROW"

Each argument: the --out files of one run (comma-separated), a colon, and the row of hpo's
configuration in them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# run as a script: this folder is on the path
from search_efficiency import merge_runs, steps_to_reach

from hpo.validation.stats import median_interval

PLAIN = "optuna-tpe+hyperband"


def fractions(files: list[str], row: str) -> list[float]:
    """Per seed: the share of the budget after which `row` first reached the files' plain
    Optuna median final best (inf: never)."""
    saved = [json.loads(Path(path).read_text()) for path in files]
    runs = merge_runs(saved)
    budgets = {out["budget_steps"] for out in saved}
    if len(budgets) != 1 or row not in runs or PLAIN not in runs:
        raise SystemExit(f"{files}: need one budget and the rows {row!r} and {PLAIN!r}")
    target = statistics.median(r["best"] for r in runs[PLAIN])
    (budget,) = budgets
    return [steps_to_reach(r["curve"], target) / budget for r in runs[row]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="FILES:ROW")
    args = parser.parse_args()
    pooled: list[float] = []
    for spec in args.runs:
        files, _, row = spec.partition(":")
        share = fractions(files.split(","), row)
        low, high = median_interval(share)
        print(
            f"{files} [{row}]: {len(share)} seeds, median {statistics.median(share):.2f} "
            f"[{low:.2f}, {high:.2f}]"
        )
        pooled += share
    low, high = median_interval(pooled)
    print(
        f"pooled: {len(pooled)} seeds, median {statistics.median(pooled):.2f} "
        f"[{low:.2f}, {high:.2f}]"
    )


if __name__ == "__main__":
    main()
