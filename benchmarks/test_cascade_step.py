"""One cascade stage's training step: eager vs torch.compile (and CUDA graphs on a GPU), same model and data.

The stage is `BENCH_CASCADE_STAGE` of `BENCH_CASCADE_CONFIG` (default: the tiny config's last stage on CPU,
the default config's stage_128 on a GPU), conditioned on the ground-truth previous-stage volume so no
earlier stage has to be trained first; `BENCH_CASCADE_CASES` phantom cases (default 12) keep data
generation short. Each round is `STEPS` optimizer steps after a warm-up epoch (compile, autotune); each mode's rounds
alternate with rounds of the fp32 eager baseline, and the ratios of the two are printed (min and median).

Run: .venv/bin/python -m pytest benchmarks/test_cascade_step.py --benchmark-only -s
"""
from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from benchmarks.ratios import record_ratio
from hnerv_fast import host_memory
from hnerv_fast.config import load_config
from hnerv_fast.train.engine import Engine, seed_everything
from hnerv_fast.train.tasks.cascade import CascadeStageTask, Conditioning, load_cascade_data

GPU = torch.cuda.is_available()
CONFIG = os.environ.get("BENCH_CASCADE_CONFIG", "configs/cascade_default.yaml" if GPU else "configs/cascade_tiny.yaml")
STAGE = os.environ.get("BENCH_CASCADE_STAGE", "stage_128" if GPU else "stage_32")
CASES = int(os.environ.get("BENCH_CASCADE_CASES", "12"))
STEPS = 6
ROUNDS = 7
# (train.amp, train.compile): fp32 eager first (the baseline); on CPU `auto` is bf16 where the CPU has native bf16
# (on GPU, fp32 compiled is left out: each mode is a cold compile of the stage, and gpu-check has ~2 minutes)
MODES = ([("none", "none"), ("fp16", "none"), ("fp16", "default"), ("fp16", "reduce-overhead")]
         if GPU else [("none", "none"), ("auto", "none"), ("none", "default"), ("auto", "default")])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_cascade")
    if not GPU:
        host_memory.keep_freed_blocks()  # as the trainer does for a CPU run
    cfg = load_config(CONFIG, [f"output.checkpoint_dir={tmp}/ckpt", "train.conditioning=ground_truth",
                               f"data.num_cases={CASES}", "data.supersample=1", f"train.stages=[{STAGE}]"])
    seed_everything(cfg.train.seed, deterministic=False)
    device = torch.device("cuda" if GPU else "cpu")
    data = load_cascade_data(cfg, device)
    prev = Conditioning(cfg, data, device, tmp / "ckpt").for_stage(STAGE)
    return cfg, device, data, prev, tmp


def _steps(engine, batches, device):
    for batch in batches:
        engine.train_step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()


def _engine(setup, amp: str, compile_mode: str):
    """A warmed-up (compiled) engine of the stage and the `STEPS` batches of one round."""
    cfg, device, data, prev, tmp = setup
    cfg.train.amp, cfg.train.compile = amp, compile_mode
    task = CascadeStageTask(cfg, STAGE, data, prev, device)
    engine = Engine(task, cfg.stage_train(STAGE), device, tmp / "ckpt")
    batches = (task.train_batches(1) * STEPS)[:STEPS]  # repeat a short epoch: STEPS steps per round
    _steps(engine, batches, device)  # warm-up (and compile)
    return engine, batches, device


@pytest.fixture(scope="module")
def baseline(setup):
    """fp32 eager, timed again between the rounds of every mode: this machine's speed drifts by tens of per
    cent over minutes (a shared host), so each ratio compares rounds taken side by side."""
    return _engine(setup, "none", "none")


@pytest.mark.parametrize("amp, compile_mode", MODES)
def test_cascade_stage_step(benchmark, setup, baseline, amp, compile_mode):
    torch._dynamo.reset()
    engine, batches, device = _engine(setup, amp, compile_mode)
    base_seconds = []

    def baseline_round():  # pedantic's untimed setup: one baseline round before each timed round
        start = time.perf_counter()
        _steps(*baseline)
        base_seconds.append(time.perf_counter() - start)
        return (engine, batches, device), {}

    benchmark.pedantic(_steps, setup=baseline_round, rounds=ROUNDS, iterations=1)
    label = f"amp={amp}->{engine.amp} compile={compile_mode}"
    record_ratio(f"cascade {STAGE} step x{STEPS}", label, benchmark)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        ratio_min = min(base_seconds) / stats.stats.min
        ratio_median = statistics.median(base_seconds) / stats.stats.median
        print(f"\n[cascade {STAGE} step x{STEPS}] {label}: {ratio_min:.2f}x (min) / {ratio_median:.2f}x (median) "
              f"the fp32 eager rounds taken in between")
