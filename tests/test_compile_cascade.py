"""The compiled cascade step on CPU draws the same timesteps and noise as eager (random ops stay aten calls:
Engine._compiled's `fallback_random`), so a compiled run follows the eager one step for step."""
from __future__ import annotations

import pytest
import torch

from tests.hot_loop import cascade_engine

pytestmark = pytest.mark.slow  # an inductor compile (~30 s on 2 cores)


def _metrics(tmp_path, compile_mode: str) -> torch.Tensor:
    torch._dynamo.reset()
    torch.manual_seed(0)  # the same initial weights in both runs
    task, engine = cascade_engine(tmp_path / compile_mode, torch.device("cpu"), "data.num_cases=14",
                                  "data.supersample=1", "train.amp=none", f"train.compile={compile_mode}")
    torch.manual_seed(123)  # the step's t and noise come from the global RNG
    return torch.stack([engine.train_step(batch)[0] for batch in task.train_batches(1)])


def test_compiled_cascade_steps_equal_eager(tmp_path):
    eager = _metrics(tmp_path, "none")
    compiled = _metrics(tmp_path, "default")
    assert eager.shape[0] >= 2
    # [total, diffusion, physics] per step: same draws, so equal up to float rounding (different noise would
    # move the diffusion loss by tens of per cent)
    torch.testing.assert_close(compiled, eager, rtol=2e-3, atol=1e-6)
