"""On a GPU the training step and its per-step logging never synchronise with the host (both trainers),
and the fused ops really run on the GPU backend that was asked for (no silent fallback)."""
from __future__ import annotations

import pytest
import torch

from hnerv_fast.config import load_config
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.ops import _backends
from hnerv_fast.train.engine import Engine
from hnerv_fast.train.tasks.cascade import CascadeStageTask, Conditioning, load_cascade_data
from hnerv_fast.train.tasks.dual_hnerv import DualHNeRVTask
from tests.ops_backends import gpu_backend  # noqa: F401  (fixture: cuda, then triton)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")]


def _run_without_sync(engine, task, batches, writer):
    """One warm-up step (compile, cuBLAS/cuDNN handles, allocator), then the rest with syncs as errors."""
    task.writer = writer
    task.begin_epoch(1)
    engine.train_step(batches[0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, batch in enumerate(batches[1:], start=2):
            engine.lr.fill_(engine.cfg.lr)
            metrics, norms = engine.train_step(batch)
            task.on_step(1, step, metrics, norms)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    writer.flush()


@pytest.mark.parametrize("compile_mode", ["none", "default"])
def test_dual_hot_loop_has_no_host_sync(tmp_path, compile_mode, gpu_backend):
    if gpu_backend == "triton" and compile_mode != "none":
        pytest.skip("one compiled run (cuda backend) is enough: the backend does not change the graph's syncs")
    cfg = load_config("configs/dual_hnerv_tiny.yaml", [
        f"clip.cache_dir={tmp_path}/clip", f"output.output_dir={tmp_path}/out", "train.progress=false",
        "loss.pixel_loss_warmup_epochs=0", f"train.compile={compile_mode}", "train.device=cuda"])
    device = torch.device("cuda")
    task = DualHNeRVTask(cfg, device)
    engine = Engine(task, cfg.train, device, tmp_path / "ckpt")
    with AsyncSummaryWriter(str(tmp_path / "tb")) as writer:
        _run_without_sync(engine, task, task.train_batches(1), writer)
        assert "Train_Batch/total_loss" in writer.latest
    assert _backends.resolve(device) == gpu_backend


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_cascade_hot_loop_has_no_host_sync(tmp_path, amp):
    """The cascade's default GPU setting (fp16 + GradScaler, fused AdamW) and bf16, compiled."""
    cfg = load_config("configs/cascade_tiny.yaml", [
        f"output.checkpoint_dir={tmp_path}/ckpt", "train.conditioning=ground_truth", "train.device=cuda",
        f"train.amp={amp}", "train.compile=default", "train.log_every_steps=1"])
    device = torch.device("cuda")
    data = load_cascade_data(cfg, device)
    name = cfg.cascade_order()[-1]  # conditioned on the previous stage's volume
    task = CascadeStageTask(cfg, name, data, Conditioning(cfg, data, device, tmp_path / "ckpt").for_stage(name),
                            device)
    engine = Engine(task, cfg.stage_engine(name), device, tmp_path / "ckpt")
    with AsyncSummaryWriter(str(tmp_path / "tb")) as writer:
        _run_without_sync(engine, task, task.train_batches(1), writer)
        assert any(tag.endswith("_step") for tag in writer.latest), sorted(writer.latest)
