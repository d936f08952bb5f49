"""The compiled cascade step on CPU draws the same timesteps and noise as eager (random ops stay aten calls:
Engine._compiled's `fallback_random`), so a compiled run follows the eager one step for step."""
from __future__ import annotations

import pytest
import torch

from hnerv_fast.config import load_config
from hnerv_fast.train.engine import Engine, seed_everything
from hnerv_fast.train.tasks.cascade import CascadeStageTask, Conditioning, load_cascade_data

pytestmark = pytest.mark.slow  # an inductor compile (~30 s on 2 cores)

STAGE = "stage_16"


def _metrics(tmp_path, compile_mode: str) -> torch.Tensor:
    torch._dynamo.reset()
    cfg = load_config("configs/cascade_tiny.yaml", [
        f"output.checkpoint_dir={tmp_path}/{compile_mode}", "train.conditioning=ground_truth", "data.num_cases=14",
        "data.supersample=1", f"train.stages=[{STAGE}]", "train.amp=none", f"train.compile={compile_mode}"])
    seed_everything(cfg.train.seed, deterministic=False)
    device = torch.device("cpu")
    data = load_cascade_data(cfg, device)
    prev = Conditioning(cfg, data, device, tmp_path / compile_mode).for_stage(STAGE)
    task = CascadeStageTask(cfg, STAGE, data, prev, device)
    engine = Engine(task, cfg.stage_train(STAGE), device, tmp_path / compile_mode)
    torch.manual_seed(123)  # the step's t and noise come from the global RNG
    return torch.stack([engine.train_step(batch)[0] for batch in task.train_batches(1)])


def test_compiled_cascade_steps_equal_eager(tmp_path):
    eager = _metrics(tmp_path, "none")
    compiled = _metrics(tmp_path, "default")
    assert eager.shape[0] >= 2
    # [total, diffusion, physics] per step: same draws, so equal up to float rounding (different noise would
    # move the diffusion loss by tens of per cent)
    torch.testing.assert_close(compiled, eager, rtol=2e-3, atol=1e-6)
