"""Training-step throughput: a seed-style eager loop vs the hnerv_fast step, same model/config/data.

(a) seed-style: unfused reference losses, per-parameter gradient-norm loop with `.item()`, per-batch
    `.item()` logging into a synchronous SummaryWriter.
(b) hnerv_fast: fused ops, grouped grad norms in one call, metrics kept on device, async logger,
    optionally torch.compile (train.compile).
Also: logger overhead (hnerv_fast step with the async writer vs no logging vs a synchronous writer).

Run: .venv/bin/python -m pytest benchmarks/test_train_step.py --benchmark-only -s
"""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from benchmarks.ratios import record_ratio
from benchmarks.seed_loop import published_blocks, seed_style_epoch
from hnerv_fast.config import load_config
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.train.engine import Engine, seed_everything
from hnerv_fast.train.tasks.dual_hnerv import DualHNeRVTask

CONFIG = os.environ.get("BENCH_CONFIG", "configs/dual_hnerv_tiny.yaml")
# e.g. BENCH_OVERRIDES="data.height=160 data.width=640 model.fc_hw=[5,10] model.dec_strds=[2,2,2,2]"
# for 80x160 patches (the HNeRV-scale patch shape of benchmarks/RESULTS.md)
OVERRIDES = os.environ.get("BENCH_OVERRIDES", "").split()
STEPS = 9  # one tiny-config epoch


def bench_config(tmp, config: str = CONFIG, overrides=OVERRIDES):
    """The benchmarked dual config (also benchmarks/gpu_step_profile.py's: the same graphs, so inductor's cache
    from one serves the other)."""
    return load_config(config, [f"clip.cache_dir={tmp}/clip", "train.progress=false",
                                "loss.pixel_loss_warmup_epochs=0", *overrides])  # CLIP loss on: the full step


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_step")
    cfg = bench_config(tmp)
    seed_everything(cfg.train.seed, deterministic=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return cfg, device, tmp


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def fast_engine(cfg, device, tmp, compile_mode="none", amp="none", graph_step=False):
    cfg.train.compile = compile_mode
    cfg.train.amp = amp
    cfg.train.graph_step = graph_step
    task = DualHNeRVTask(cfg, device)
    engine = Engine(task, cfg.train, device, tmp / "ckpt")
    task.begin_epoch(1)
    return task, engine


def fast_epoch(task, engine, batches, device, log: bool):
    for i, batch in enumerate(batches):
        metrics, norms = engine.train_step(batch)
        if log:
            task.on_step(1, i + 1, metrics, norms)
    _sync(device)


def test_seed_style_eager_loop(benchmark, setup):
    cfg, device, tmp = setup
    task, _ = fast_engine(cfg, device, tmp)
    model = published_blocks(task.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    batches = task.train_batches(1)[:STEPS]
    with SummaryWriter(str(tmp / "seed_tb")) as writer:
        seed_style_epoch(task, model, optimizer, writer, batches, device)  # warm-up
        benchmark.pedantic(seed_style_epoch, args=(task, model, optimizer, writer, batches, device),
                           rounds=3, iterations=1)
    record_ratio("train step", "seed-style eager", benchmark)


# (train.compile, train.amp, train.graph_step). amp=auto is bf16 on a CPU with native bf16 and fp32 on a GPU
# (precision.py), so a GPU names bf16 itself; each compiled mode is a cold compile, so on a GPU (gpu-check's
# share is ~1.5 minutes) the one least needed comes last: times are printed as they are taken, and a cut-short
# part keeps the rest. graph_step (the whole step as one CUDA graph) is GPU-only.
MODES = ([("none", "none", False), ("none", "bf16", False), ("default", "none", False),
          ("reduce-overhead", "none", False), ("default", "none", True), ("reduce-overhead", "bf16", False),
          ("default", "bf16", True), ("default", "bf16", False)]
         if torch.cuda.is_available() else
         [("none", "none", False), ("none", "auto", False), ("default", "none", False), ("default", "auto", False)])


@pytest.mark.parametrize("compile_mode, amp, graph_step", MODES)
def test_hnerv_fast_step(benchmark, setup, compile_mode, amp, graph_step):
    cfg, device, tmp = setup
    task, engine = fast_engine(cfg, device, tmp, compile_mode, amp, graph_step)
    batches = task.train_batches(1)[:STEPS]
    with AsyncSummaryWriter(str(tmp / f"fast_tb_{compile_mode}")) as writer:
        task.writer = writer
        fast_epoch(task, engine, batches, device, log=True)  # warm-up (and compile)
        benchmark.pedantic(fast_epoch, args=(task, engine, batches, device, True), rounds=3, iterations=1)
    whole = " graph_step" if engine.step_graph is not None else ""
    record_ratio("train step", f"hnerv_fast compile={compile_mode} amp={engine.amp}{whole}", benchmark)


@pytest.mark.parametrize("logger", ["off", "async", "sync"])
def test_logger_overhead(benchmark, setup, logger):
    cfg, device, tmp = setup
    task, engine = fast_engine(cfg, device, tmp)
    batches = task.train_batches(1)[:STEPS]

    class SyncWriter:  # same tags, written on the caller's thread (forces a host read per value)
        def __init__(self, logdir):
            self.w = SummaryWriter(logdir)
            self.latest = {}

        def add_scalars(self, step, values, callback=None):
            for tag, value in values.items():
                self.w.add_scalar(tag, float(value), step)

    if logger == "off":
        benchmark.pedantic(fast_epoch, args=(task, engine, batches, device, False), rounds=3, iterations=1)
    elif logger == "async":
        with AsyncSummaryWriter(str(tmp / "tb_async")) as writer:
            task.writer = writer
            benchmark.pedantic(fast_epoch, args=(task, engine, batches, device, True), rounds=3, iterations=1)
    else:
        task.writer = SyncWriter(str(tmp / "tb_sync"))
        benchmark.pedantic(fast_epoch, args=(task, engine, batches, device, True), rounds=3, iterations=1)
        task.writer.w.close()
    record_ratio("logger", f"logging {logger}", benchmark)
