"""CLI: python -m hnerv_fast.train --config configs/<name>.yaml [key=value ...] [--resume [PATH]]"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hnerv_fast.errors import report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hnerv_fast.train", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML config file (configs/*.yaml)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="continue from a checkpoint: a path, or no value for the run's latest checkpoint")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=20")
    args = parser.parse_args(argv)
    # `--resume a.b=1` takes the override as its value. Not read as override + bare --resume: a checkpoint
    # path may contain '=' too, and a path that does not exist would then turn into a confusing config error.
    if args.resume is not None and "=" in args.resume and not Path(args.resume).exists():
        from hnerv_fast.config import ConfigError

        return report(ConfigError(f"--resume {args.resume}: no such checkpoint, and it looks like an override; "
                                  f"put --resume after the overrides, or give it a checkpoint path"))
    try:
        # imported here: torch takes seconds to import, and a Ctrl-C then is answered like one during training
        from hnerv_fast.train.trainer import run_from_args

        return run_from_args(args.config, args.overrides, args.resume)
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, not a traceback
        if os.environ.get("RANK", "0") == "0":  # torchrun's rank (the process group may be gone, or not loaded)
            print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a process killed by Ctrl-C


if __name__ == "__main__":
    sys.exit(main())
