"""Where a dual training step's time goes: host or device, per compile mode (part `profile` of make gpu-check).

    python -m benchmarks.gpu_step_profile        (a GPU; on a CPU it runs too, host rows only)

For the dual default config, compile none / default / reduce-overhead in fp32, reduce-overhead in bf16 and the
whole step as one CUDA graph (`train.graph_step`): wall time per step, the device's busy time per step (the sum
of its kernels' times) and the largest host ops (self CPU time) and kernels. On an H200 the compiled fp32 step
took 5.9 ms and the CUDA-graph one 2.7 ms: a wall time well above the busy time is host-bound, and the host rows
say what to cut. Every line starts with "PROF|".
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.test_train_step import bench_config, fast_engine, fast_epoch
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.train.engine import seed_everything

CONFIG = os.environ.get("BENCH_CONFIG", "configs/dual_hnerv_default.yaml")
# (train.compile, train.amp, train.graph_step)
MODES = (("none", "none", False), ("default", "none", False), ("reduce-overhead", "none", False),
         ("reduce-overhead", "bf16", False), ("default", "none", True))
WARMUP, STEPS, TOP = 6, 10, 12


def profile_mode(mode: str, amp: str, graph_step: bool, device: torch.device, tmp: str,
                 overrides: list[str] = ()) -> None:
    cfg = bench_config(tmp, CONFIG, list(overrides))
    seed_everything(cfg.train.seed, deterministic=False)
    task, engine = fast_engine(cfg, device, Path(tmp), mode, amp, graph_step)
    name = f"{mode}/{engine.amp}" + ("/step" if engine.step_graph is not None else "")
    batches = task.train_batches(1)
    timed = batches[:STEPS]
    with AsyncSummaryWriter(f"{tmp}/tb_{mode}_{amp}_{graph_step}") as writer:
        task.writer = writer
        fast_epoch(task, engine, batches[:WARMUP], device, log=True)  # compile, CUDA-graph warm-up and record
        start = time.perf_counter()
        fast_epoch(task, engine, timed, device, log=True)
        wall_us = (time.perf_counter() - start) / len(timed) * 1e6
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            fast_epoch(task, engine, timed, device, log=True)
    per_step = 1 / len(timed)
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    busy_us = sum(e.self_device_time_total for e in kernels) * per_step
    host = [e for e in events if e.device_type == DeviceType.CPU]
    print(f"PROF| {name:20s} wall {wall_us:8.0f} us/step   device busy {busy_us:8.0f} us/step   "
          f"kernels {sum(e.count for e in kernels) * per_step:5.0f}/step", flush=True)
    for e in sorted(host, key=lambda e: -e.self_cpu_time_total)[:TOP]:
        print(f"PROF| {name:20s}   host   {e.self_cpu_time_total * per_step:7.0f} us  x{e.count * per_step:5.1f}  "
              f"{e.key[:90]}")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:TOP]:
        print(f"PROF| {name:20s}   kernel {e.self_device_time_total * per_step:7.0f} us  x{e.count * per_step:5.1f}  "
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
