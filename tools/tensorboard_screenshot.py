"""Screenshot of a TensorBoard dashboard in headless Chromium (the README's docs/tensorboard.png).

    python -m tools.tensorboard_screenshot --logdir RUN --out docs/tensorboard.png [--page custom_scalars]

Run from the repository root (tools/ is not installed). TensorBoard is started on 127.0.0.1 for RUN, the
PNG is written once it serves scalars, and TensorBoard is stopped again.
"""
from __future__ import annotations

import argparse
import sys

from hnerv_fast.tensorboard import TensorBoardError, tensorboard_server, wait_for_data
from tools.chromium import ChromiumError, chromium_capture


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.tensorboard_screenshot",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", required=True, help="directory holding the run(s) to show")
    parser.add_argument("--out", required=True, metavar="PNG", help="where to write the screenshot")
    parser.add_argument("--page", default="custom_scalars", help="dashboard to capture (default custom_scalars)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for TensorBoard and its data")
    args = parser.parse_args(argv)
    try:
        with tensorboard_server(args.logdir, timeout=args.timeout) as url:
            wait_for_data(url, timeout=args.timeout)
            chromium_capture(f"{url}#{args.page}", screenshot=args.out)
    except (TensorBoardError, ChromiumError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"screenshot of {args.logdir} ({args.page}) written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
