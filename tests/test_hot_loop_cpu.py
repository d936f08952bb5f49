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

from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from tests.hot_loop import cascade_engine, dual_engine, run_guarded_steps

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
    task, engine = dual_engine(tmp_path, CPU, "train.compile=none", *overrides)
    with AsyncSummaryWriter(str(tmp_path / "tb")) as writer:
        run_guarded_steps(engine, task, writer, no_host_reads)
        assert "Train_Batch/total_loss" in writer.latest


def test_cascade_step_reads_nothing_on_the_host(tmp_path, no_host_reads):
    task, engine = cascade_engine(tmp_path, CPU, "train.compile=none", "train.amp=auto")
    with AsyncSummaryWriter(str(tmp_path / "tb")) as writer:
        run_guarded_steps(engine, task, writer, no_host_reads)
        assert any(tag.endswith("_step") for tag in writer.latest), sorted(writer.latest)
