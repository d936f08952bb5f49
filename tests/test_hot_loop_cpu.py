"""The training step and its per-step logging never read a tensor value on the host — on this CPU-only
machine too (tests/test_gpu_hot_loop.py checks the same on a GPU with the CUDA sync detector).

A read is caught two ways while the steps run on the main thread: a dispatch mode that fails on
`aten::_local_scalar_dense` (what `.item()`, `float()`, `int()`, `bool()` and `if tensor:` run), and
patched `Tensor.tolist` / `Tensor.numpy` (they read memory without dispatching). The async writer's own
thread reads values by design, so only the calling thread is checked.
"""
from __future__ import annotations

import threading

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hnerv_fast.config import load_config
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.train.engine import Engine
from hnerv_fast.train.tasks.cascade import CascadeStageTask, Conditioning, load_cascade_data
from hnerv_fast.train.tasks.dual_hnerv import DualHNeRVTask

CPU = torch.device("cpu")


class HostReadError(AssertionError):
    pass


class NoHostReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise HostReadError("a tensor value was read on the host inside the training step")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def no_host_reads(monkeypatch):
    """Context manager factory: inside it, host reads on the calling thread raise HostReadError."""
    caller = threading.current_thread()

    def guarded(original):
        def call(self, *args, **kwargs):
            if threading.current_thread() is caller:
                raise HostReadError(f"Tensor.{original.__name__} inside the training step")
            return original(self, *args, **kwargs)
        return call

    def start():
        monkeypatch.setattr(torch.Tensor, "tolist", guarded(torch.Tensor.tolist))
        monkeypatch.setattr(torch.Tensor, "numpy", guarded(torch.Tensor.numpy))
        return NoHostReads()

    return start


def _run_steps(engine, task, writer, guard):
    """One epoch's optimizer steps (micro-batches grouped by grad_accum_steps), all but the first guarded:
    the first is a warm-up (first-call set-up may read freely)."""
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


def test_guard_catches_reads(no_host_reads):
    """The guard itself: each kind of host read is caught (so the tests below can fail)."""
    t = torch.ones(3)
    for read in (lambda: t.sum().item(), lambda: float(t[0]), lambda: bool(t.any()), lambda: t.tolist(),
                 lambda: t.numpy()):
        with no_host_reads(), pytest.raises(HostReadError):
            read()


@pytest.mark.parametrize("overrides", [[], ["train.grad_accum_steps=2", "train.grad_clip=1.0"]],
                         ids=["plain", "accum+clip"])
def test_dual_step_reads_nothing_on_the_host(tmp_path, no_host_reads, overrides):
    cfg = load_config("configs/dual_hnerv_tiny.yaml", [
        f"clip.cache_dir={tmp_path}/clip", "train.progress=false", "loss.pixel_loss_warmup_epochs=0",
        "train.compile=none", "train.log_every_steps=1", *overrides])
    task = DualHNeRVTask(cfg, CPU)
    engine = Engine(task, cfg.train, CPU, tmp_path / "ckpt")
    with AsyncSummaryWriter(str(tmp_path / "tb")) as writer:
        _run_steps(engine, task, writer, no_host_reads)
        assert "Train_Batch/total_loss" in writer.latest


def test_cascade_step_reads_nothing_on_the_host(tmp_path, no_host_reads):
    cfg = load_config("configs/cascade_tiny.yaml", [
        f"output.checkpoint_dir={tmp_path}/ckpt", "train.conditioning=ground_truth", "train.compile=none",
        "train.log_every_steps=1", "train.amp=auto"])
    data = load_cascade_data(cfg, CPU)
    name = cfg.cascade_order()[-1]
    task = CascadeStageTask(cfg, name, data, Conditioning(cfg, data, CPU, tmp_path / "ckpt").for_stage(name), CPU)
    engine = Engine(task, cfg.stage_engine(name), CPU, tmp_path / "ckpt")
    with AsyncSummaryWriter(str(tmp_path / "tb")) as writer:
        _run_steps(engine, task, writer, no_host_reads)
        assert any(tag.endswith("_step") for tag in writer.latest), sorted(writer.latest)
