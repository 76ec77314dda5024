"""Train one config from the command line and print its final metrics as one JSON line.

python -m trainers.train --set data.corpus=../shared/data/tinyshakespeare.txt --set optim.lr=3e-4

The trainer knows nothing of hpo, so this door reads the trainer's errors itself, with the
exit codes hpo's commands use: bad input exits 2, a run that failed (diverged, out of memory) 1,
Ctrl-C 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

from trainers.config import TrainConfig, parse_sets
from trainers.errors import TrainerError, UsageError
from trainers.loop import TrainResult, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainers.train", description=__doc__.split("\n")[0])
    # the defaults in trainers/config.py, changed key by key
    what = p.add_argument_group("what to train")
    what.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.n_layer=6 (repeatable)",
    )
    what.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    # the JSON summary always goes to stdout; these are the rest
    where = p.add_argument_group("where results go")
    where.add_argument("--checkpoint-dir", help="save last.pt/best.pt here and resume from it")
    where.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends it as Ctrl-C does
    try:
        return _run(args)
    except TrainerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    cfg = TrainConfig().with_overrides(parse_sets(args.set))
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    result = train(cfg, checkpoint_dir=args.checkpoint_dir, progress=not args.no_progress)
    print(json.dumps(_summary(result)))
    return 0


def _summary(result: TrainResult) -> dict[str, Any]:
    """The last evaluation's metrics and how the run went: the CLI's one JSON line."""
    return {
        **result.metrics,
        "best/val/loss": result.best_val_loss,
        "best/step": result.best_step,
        "steps": result.steps,
        "tokens": result.tokens,
        "n_params": result.n_params,
        "wall_time_s": round(result.wall_time_s, 2),
        "stop_reason": result.stop_reason,
        "device": result.device,
    }


if __name__ == "__main__":
    sys.exit(main())
