"""On a GPU the training step and its per-step logging never synchronise with the host."""
from __future__ import annotations

import pytest
import torch

from hnerv_fast.config import load_config
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.train.engine import Engine
from hnerv_fast.train.tasks.dual_hnerv import DualHNeRVTask

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")]


@pytest.mark.parametrize("compile_mode", ["none", "default"])
def test_hot_loop_has_no_host_sync(tmp_path, compile_mode):
    cfg = load_config("configs/dual_hnerv_tiny.yaml", [
        f"clip.cache_dir={tmp_path}/clip", f"output.output_dir={tmp_path}/out", "train.progress=false",
        "loss.pixel_loss_warmup_epochs=0", f"train.compile={compile_mode}", "train.device=cuda"])
    device = torch.device("cuda")
    task = DualHNeRVTask(cfg, device)
    engine = Engine(task, cfg.train, device, tmp_path / "ckpt")
    batches = task.train_batches(1)
    with AsyncSummaryWriter(str(tmp_path / "tb")) as writer:
        task.writer = writer
        task.begin_epoch(1)
        engine.train_step(batches[0])  # warm-up: compile, cuBLAS/cuDNN handles, allocator
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for step, batch in enumerate(batches[1:], start=2):
                engine.lr.fill_(cfg.train.lr)
                metrics, norms = engine.train_step(batch)
                task.on_step(1, step, metrics, norms)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        writer.flush()
        assert "Train_Batch/total_loss" in writer.latest
