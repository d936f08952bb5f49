"""On a GPU the training step and its per-step logging never synchronise with the host (both trainers),
and the fused ops really run on the GPU backend that was asked for (no silent fallback)."""
from __future__ import annotations

import pytest
import torch

from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.ops import _backends
from tests.hot_loop import cascade_engine, dual_engine, run_guarded_steps, syncs_are_errors
from tests.ops_backends import gpu_backend  # noqa: F401  (fixture: cuda, then triton)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")]


@pytest.mark.parametrize("compile_mode", ["none", "default"])
def test_dual_hot_loop_has_no_host_sync(tmp_path, compile_mode, gpu_backend):
    if gpu_backend == "triton" and compile_mode != "none":
        pytest.skip("one compiled run (cuda backend) is enough: the backend does not change the graph's syncs")
    device = torch.device("cuda")
    task, engine = dual_engine(tmp_path, device, f"train.compile={compile_mode}", "train.device=cuda")
    with AsyncSummaryWriter(str(tmp_path / "tb")) as writer:
        run_guarded_steps(engine, task, writer, syncs_are_errors)
        assert "Train_Batch/total_loss" in writer.latest
    assert _backends.resolve(device) == gpu_backend


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_cascade_hot_loop_has_no_host_sync(tmp_path, amp):
    """The cascade's default GPU setting (fp16 + GradScaler, fused AdamW) and bf16, compiled."""
    task, engine = cascade_engine(tmp_path, torch.device("cuda"), "train.device=cuda", f"train.amp={amp}",
                                  "train.compile=default")
    with AsyncSummaryWriter(str(tmp_path / "tb")) as writer:
        run_guarded_steps(engine, task, writer, syncs_are_errors)
        assert any(tag.endswith("_step") for tag in writer.latest), sorted(writer.latest)
