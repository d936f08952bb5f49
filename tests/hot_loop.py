"""Shared by the hot-loop tests (CPU: no host reads; GPU: no host syncs): the tiny tasks and a step runner."""
from __future__ import annotations

import contextlib

import torch

from hnerv_fast.config import load_config
from hnerv_fast.train.engine import Engine
from hnerv_fast.train.tasks.cascade import CascadeStageTask, Conditioning, load_cascade_data
from hnerv_fast.train.tasks.dual_hnerv import DualHNeRVTask


def dual_engine(tmp_path, device: torch.device, *overrides: str) -> tuple[DualHNeRVTask, Engine]:
    cfg = load_config("configs/dual_hnerv_tiny.yaml", [
        f"clip.cache_dir={tmp_path}/clip", f"output.output_dir={tmp_path}/out", "train.progress=false",
        "loss.pixel_loss_warmup_epochs=0", "train.log_every_steps=1", *overrides])
    task = DualHNeRVTask(cfg, device)
    return task, Engine(task, cfg.train, device, tmp_path / "ckpt")


def cascade_engine(tmp_path, device: torch.device, *overrides: str) -> tuple[CascadeStageTask, Engine]:
    """The tiny cascade's last stage, conditioned on the ground-truth previous-stage volume."""
    cfg = load_config("configs/cascade_tiny.yaml", [
        f"output.checkpoint_dir={tmp_path}/ckpt", "train.conditioning=ground_truth", "train.log_every_steps=1",
        *overrides])
    data = load_cascade_data(cfg, device)
    name = cfg.cascade_order()[-1]
    prev = Conditioning(cfg, data, device, tmp_path / "ckpt").for_stage(name)
    task = CascadeStageTask(cfg, name, data, prev, device)
    return task, Engine(task, cfg.stage_train(name), device, tmp_path / "ckpt")


def run_guarded_steps(engine, task, writer, guard) -> None:
    """One epoch's optimizer steps (micro-batches grouped by grad_accum_steps) with per-step logging, all
    but the first inside `guard()`: the first is a warm-up (compile, handles, allocator, first-call set-up)."""
    k = engine.cfg.grad_accum_steps
    batches = task.train_batches(1)
    steps = [batches[i:i + k] for i in range(0, len(batches) - k + 1, k)]
    task.writer = writer
    task.begin_epoch(1)
    engine.train_step(*steps[0])
    with guard():
        for step, micro in enumerate(steps[1:], start=2):
            engine.lr.fill_(engine.cfg.lr * task.lr_multiplier(0.5))
            metrics, norms = engine.train_step(*micro)
            task.on_step(1, step, metrics, norms)
    writer.flush()


@contextlib.contextmanager
def syncs_are_errors():
    """GPU: any host sync inside raises (work queued before it has finished first)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
