"""Sequential against fixed-seed validation, by simulation (no training).

    python benchmarks/sequential_validation.py [--reps 10000] [--max-seeds 10]

For paired differences with effect size d_z (mean over standard deviation; normal, and Student
t with 3 degrees of freedom for outlying seeds), how often each design calls the difference
beyond noise (the false-positive rate at d_z = 0, the power otherwise) and how many seeds it
runs on average. Both designs see the same simulated differences, so their gap is paired. Fixed:
hpo.validate --fixed-seeds (the exact permutation p < 0.05 at --max-seeds seeds); sequential:
hpo.validate's default (hpo.validation.sequential's looks and boundaries). The verdict's other
condition
(the 95% t-interval excludes 0) is left out of both; it only makes either call rarer.
"""

from __future__ import annotations

import argparse

import numpy as np

from hpo.validation.sequential import look, looks
from hpo.validation.stats import ALPHA


def simulate(d_z: float, dist: str, reps: int, max_seeds: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    fixed_calls, seq_calls, seq_seeds = 0, 0, 0
    for _ in range(reps):
        noise = rng.normal(size=max_seeds) if dist == "normal" else rng.standard_t(3, max_seeds)
        if dist != "normal":
            noise /= np.sqrt(3)  # t with 3 df has variance 3: scaled to 1, so d_z means the same
        d = d_z + noise
        fixed_calls += look(d, max_seeds).p_value < ALPHA
        for n in looks(max_seeds):
            at = look(d[:n], max_seeds)
            if at.decided:
                seq_calls += at.stop
                seq_seeds += n
                break
    return {
        "fixed": fixed_calls / reps,
        "sequential": seq_calls / reps,
        "seeds": seq_seeds / reps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=10_000)
    p.add_argument("--max-seeds", type=int, default=10)
    args = p.parse_args()
    print(f"looks at {looks(args.max_seeds)} seeds; {args.reps} simulated validations per row\n")
    print("| differences | d_z | fixed: calls | sequential: calls | sequential: mean seeds |")
    print("| --- | --- | --- | --- | --- |")
    for dist in ("normal", "t3"):
        for d_z in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0):
            r = simulate(d_z, dist, args.reps, args.max_seeds, seed=0)
            print(
                f"| {dist} | {d_z} | {r['fixed']:.3f} | {r['sequential']:.3f} "
                f"| {r['seeds']:.2f} of {args.max_seeds} |"
            )


if __name__ == "__main__":
    main()
