"""Train one config from the command line and print its final metrics as one JSON line.

python -m trainers.train --set data.corpus=../shared/data/tinyshakespeare.txt --set optim.lr=3e-4
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from trainers.config import TrainConfig, parse_sets
from trainers.errors import TrainerError, UsageError
from trainers.loop import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainers.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.n_layer=6 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--checkpoint-dir", help="save last.pt/best.pt here and resume from it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        cfg = TrainConfig().with_overrides(parse_sets(args.set))
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        result = train(cfg, checkpoint_dir=args.checkpoint_dir, progress=not args.no_progress)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainerError as e:  # diverged, out of memory: the run itself failed
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    summary = {
        **result.metrics,
        "best/val/loss": result.best_val_loss,
        "best/step": result.best_step,
        "steps": result.steps,
        "tokens": result.tokens,
        "params": result.n_params,
        "wall_time_s": round(result.wall_time_s, 2),
        "stop_reason": result.stop_reason,
        "device": result.device,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
