"""Where a dual training step's time goes: host or device, per compile mode (part `profile` of make gpu-check).

    python -m benchmarks.gpu_step_profile        (a GPU; on a CPU it runs too, host rows only)

For the dual default config, compile none / default / reduce-overhead in fp32, reduce-overhead in bf16 and the
whole step as one CUDA graph (`train.graph_step`): wall time per step, the device's busy time per step (the sum of its kernels' times) and the largest host ops
(self CPU time) and kernels. On an H200 the compiled fp32 step took 5.9 ms and the CUDA-graph one 2.7 ms: a wall
time well above the busy time is host-bound, and the host rows say what to cut. Every line starts with "PROF|".
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from hnerv_fast.config import load_config
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.train.engine import Engine, seed_everything
from hnerv_fast.train.tasks.dual_hnerv import DualHNeRVTask

CONFIG = os.environ.get("BENCH_CONFIG", "configs/dual_hnerv_default.yaml")
# (train.compile, train.amp, train.graph_step)
MODES = (("none", "none", False), ("default", "none", False), ("reduce-overhead", "none", False),
         ("reduce-overhead", "bf16", False), ("default", "none", True))
WARMUP, STEPS, TOP = 6, 10, 12


def _engine(mode: str, amp: str, graph_step: bool, device: torch.device, tmp: str,
            overrides: list[str]) -> tuple[DualHNeRVTask, Engine]:
    # the overrides of benchmarks/test_train_step.py: the same graphs, so inductor's cache from gpu-check's
    # dual part serves this one
    cfg = load_config(CONFIG, [f"clip.cache_dir={tmp}/clip", "train.progress=false",
                               "loss.pixel_loss_warmup_epochs=0", f"train.compile={mode}", f"train.amp={amp}",
                               f"train.graph_step={str(graph_step).lower()}",
                               *overrides])
    seed_everything(cfg.train.seed, deterministic=False)
    task = DualHNeRVTask(cfg, device)
    engine = Engine(task, cfg.train, device, f"{tmp}/ckpt_{mode}_{amp}_{graph_step}")
    task.begin_epoch(1)
    return task, engine


def _steps(task: DualHNeRVTask, engine: Engine, n: int) -> None:
    batches = task.train_batches(1)
    for i in range(n):
        metrics, norms = engine.train_step(batches[i % len(batches)])
        task.on_step(1, i + 1, metrics, norms)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()


def profile_mode(mode: str, amp: str, graph_step: bool, device: torch.device, tmp: str,
                 overrides: list[str] = ()) -> None:
    task, engine = _engine(mode, amp, graph_step, device, tmp, list(overrides))
    name = f"{mode}/{engine.amp}" + ("/step" if engine.step_graph is not None else "")
    with AsyncSummaryWriter(f"{tmp}/tb_{mode}_{amp}_{graph_step}") as writer:
        task.writer = writer
        _steps(task, engine, WARMUP)  # compile, CUDA-graph warm-up and record
        start = time.perf_counter()
        _steps(task, engine, STEPS)
        wall_us = (time.perf_counter() - start) / STEPS * 1e6
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            _steps(task, engine, STEPS)
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    busy_us = sum(e.self_device_time_total for e in kernels) / STEPS
    host = [e for e in events if e.device_type == DeviceType.CPU]
    print(f"PROF| {name:20s} wall {wall_us:8.0f} us/step   device busy {busy_us:8.0f} us/step   "
          f"kernels {sum(e.count for e in kernels) / STEPS:5.0f}/step", flush=True)
    for e in sorted(host, key=lambda e: -e.self_cpu_time_total)[:TOP]:
        print(f"PROF| {name:20s}   host   {e.self_cpu_time_total / STEPS:7.0f} us  x{e.count / STEPS:5.1f}  "
              f"{e.key[:90]}")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:TOP]:
        print(f"PROF| {name:20s}   kernel {e.self_device_time_total / STEPS:7.0f} us  x{e.count / STEPS:5.1f}  "
              f"{e.key[:90]}")


def main(modes=MODES, overrides: list[str] = ()) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"PROF| {name}: dual config {CONFIG}, {STEPS} steps after {WARMUP}", flush=True)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for mode, amp, graph_step in modes:
            try:
                profile_mode(mode, amp, graph_step, device, tmp, overrides)
            except Exception as exc:  # one mode's failure must not hide the others
                failed += 1
                print(f"PROF| {mode}/{amp} ERROR {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
