"""On a CPU, do more worker processes train faster? One 2-thread training run against two
1-thread runs side by side (what `hpo.run --workers 2` gives each worker on 2 cores), the same
config and steps; total tokens/s of each, over several paired rounds.

    python benchmarks/cpu_workers.py [--rounds 3] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def run(threads: int, steps: int, copies: int) -> float:
    """Total training tokens/s of `copies` runs side by side with `threads` threads each."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    args = ["--set", f"train.max_steps={steps}", "--set", f"train.eval_interval={steps // 3}"]
    command = [sys.executable, "-m", "trainers.train", *args, "--no-progress"]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(copies)
    ]
    total = 0.0
    for proc in procs:
        out, _ = proc.communicate()
        assert proc.returncode == 0, out
        total += json.loads(out.strip().splitlines()[-1])["system/tokens_per_s"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    one, two = [], []
    for _ in range(args.rounds):
        one.append(run(os.cpu_count() or 1, args.steps, copies=1))
        two.append(run(1, args.steps, copies=os.cpu_count() or 1))
    print(
        json.dumps(
            {
                "cpus": os.cpu_count(),
                "one_worker_all_threads_tokens_per_s": [round(x) for x in one],
                "one_thread_per_worker_total_tokens_per_s": [round(x) for x in two],
                "median_ratio": round(statistics.median(two) / statistics.median(one), 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
