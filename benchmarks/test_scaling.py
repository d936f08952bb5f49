"""Data-parallel scaling on CPU: the tiny dual-HNeRV config, 1 process vs torchrun with 2 processes (gloo).

Weak scaling: every process keeps the per-rank batch (train.batch_size=32), so 2 processes train a
global batch of 64. Each run is one subprocess (`benchmark.pedantic(rounds=1)` times its whole wall
clock, start-up included); the steady-state throughput comes from the epoch times the trainer prints
(epochs after the first, eval excluded):

    samples/s = samples per epoch / epoch seconds
    efficiency(2) = samples/s with 2 processes / (2 x samples/s of one 1-thread process)

Layouts: "1 proc x 1 thread" (the per-rank unit torchrun starts: it sets OMP_NUM_THREADS=1),
"1 proc x 2 threads" (the ordinary single-process run on this 2-core machine) and "2 procs x 1 thread".

Run: .venv/bin/python -m pytest benchmarks/test_scaling.py --benchmark-only -s
"""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.ratios import record_ratio

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 5
TRAIN_PATCHES = 36 * 8  # tiny config: 36 training frames x 8 patches
BATCH = 32
RESULTS: dict[str, float] = {}  # layout -> samples/s
LAYOUTS = {"1 proc x 1 thread": (1, 1), "1 proc x 2 threads": (1, 2), "2 procs x 1 thread": (2, 1)}


@pytest.fixture(scope="module")
def clip_cache(tmp_path_factory):
    """CLIP targets computed once, so no timed run pays for them."""
    cache = tmp_path_factory.mktemp("clip")
    _train(1, 2, cache, tmp_path_factory.mktemp("warm"), epochs=1)
    return cache


def _train(procs: int, threads: int, cache: Path, out: Path, epochs: int = EPOCHS) -> str:
    args = ["--config", "configs/dual_hnerv_tiny.yaml", f"train.epochs={epochs}", f"train.batch_size={BATCH}",
            "loss.pixel_loss_warmup_epochs=1", f"train.eval_freq={epochs}", f"train.params_every={epochs}",
            "train.progress=false", f"output.output_dir={out}", f"clip.cache_dir={cache}"]
    if procs == 1:
        cmd = [sys.executable, "-m", "hnerv_fast.train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               "-m", "hnerv_fast.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def _samples_per_second(stdout: str, procs: int) -> float:
    seconds = [float(s) for s in re.findall(r"^epoch \d+/\d+ ([0-9.]+)s", stdout, flags=re.M)]
    assert len(seconds) == EPOCHS, stdout
    steady = statistics.median(seconds[1:])  # epoch 1 warms up (allocator, first DDP buckets)
    samples = (TRAIN_PATCHES // (BATCH * procs)) * BATCH * procs  # static shapes: the last partial step is dropped
    return samples / steady


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_scaling(benchmark, clip_cache, tmp_path, layout):
    procs, threads = LAYOUTS[layout]
    stdout = benchmark.pedantic(_train, args=(procs, threads, clip_cache, tmp_path), rounds=1, iterations=1)
    record_ratio("scaling (whole run, start-up included)", layout, benchmark)
    RESULTS[layout] = _samples_per_second(stdout, procs)
    print(f"\n{layout}: {RESULTS[layout]:.0f} samples/s (steady-state epochs)")
    if len(RESULTS) == len(LAYOUTS):
        one, two_threads, two = (RESULTS[k] for k in LAYOUTS)
        print(f"scaling efficiency 1 -> 2 processes: {two / (2 * one):.0%} "
              f"(2 procs x 1 thread vs 2 x [1 proc x 1 thread]); "
              f"vs one 2-thread process: {two / two_threads:.2f}x")
