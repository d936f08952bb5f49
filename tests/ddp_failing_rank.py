"""torchrun entry for tests/test_distributed.py: `python -m hnerv_fast.train` with an error injected on
one rank (env FAIL_RANK, FAIL_AT_STEP), to check that one failing rank ends the whole job."""
from __future__ import annotations

import os
import sys

from hnerv_fast.train import engine
from hnerv_fast.train.__main__ import main

if int(os.environ["RANK"]) == int(os.environ.get("FAIL_RANK", "1")):
    original = engine.Engine.train_step
    fail_at = int(os.environ.get("FAIL_AT_STEP", "3"))

    def failing_step(self, *batches):
        if self.global_step + 1 == fail_at:
            raise RuntimeError(f"injected failure on rank {os.environ['RANK']} at step {fail_at}")
        return original(self, *batches)

    engine.Engine.train_step = failing_step

if __name__ == "__main__":
    sys.exit(main())
