"""CLI: python -m hnerv_fast.train --config configs/<name>.yaml [key=value ...] [--resume [PATH]]"""
from __future__ import annotations

import argparse
import sys

from hnerv_fast.train.trainer import run_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hnerv_fast.train", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML config file (configs/*.yaml)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="continue from a checkpoint: a path, or no value for the run's latest checkpoint")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=20")
    args = parser.parse_args(argv)
    return run_from_args(args.config, args.overrides, args.resume)


if __name__ == "__main__":
    sys.exit(main())
