"""A whole training epoch of the dual default config (27 steps of 32 patches, CLIP loss on), same model and frames:

(a) the reference trainer (AlanjyHuang/HNeRV core/train_patch_dual.py, unmodified, see
    benchmarks/reference_trainer.py) when `REFERENCE_HNERV` names a checkout of it; its own printed epoch times;
(b) the seed-style eager loop (benchmarks/seed_loop.py), fp32;
(c) hnerv_fast's epoch (Engine.fit for one epoch: steps, epoch logging, checkpoint), fp32 eager
    (`train.amp=none train.compile=none`) and the default (`auto`/`auto`: bf16 autocast where the CPU has
    native bf16, compiled when the run is long enough; on a GPU: compiled).
Each is timed over 3 epochs after a warm-up epoch (compile, CLIP cache of the reference); best epoch reported.
Epochs with an evaluation are not timed (eval_freq 10; the reference's eval is after its printed time).

Run: .venv/bin/python -m pytest benchmarks/test_epoch.py --benchmark-only -s -p no:cacheprovider
     REFERENCE_HNERV=/tmp/hnerv_ref .venv/bin/python -m pytest benchmarks/test_epoch.py --benchmark-only -s
"""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from benchmarks.ratios import record_ratio, record_seconds
from benchmarks.reference_trainer import REFERENCE_ENV, reference_epoch_seconds, write_frames
from benchmarks.seed_loop import published_blocks, seed_style_epoch
from hnerv_fast import host_memory
from hnerv_fast.config import load_config
from hnerv_fast.data.video import load_frames
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.train.engine import Engine, seed_everything
from hnerv_fast.train.tasks.dual_hnerv import DualHNeRVTask

CONFIG = os.environ.get("BENCH_CONFIG", "configs/dual_hnerv_default.yaml")
ROUNDS = 3
GROUP = "dual epoch"
VS_REFERENCE = "dual epoch vs reference trainer"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_epoch")
    cfg = load_config(CONFIG, ["train.progress=false", "loss.pixel_loss_warmup_epochs=0",
                               f"output.output_dir={tmp}/out"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        host_memory.keep_freed_blocks()  # as the trainer does for a CPU run (the seed-style loop gets it too)
    return cfg, device, tmp


def _task(cfg, device):
    seed_everything(cfg.train.seed, deterministic=False)
    return DualHNeRVTask(cfg, device)


def test_reference_trainer(benchmark, setup):
    """Runs first, so it is the baseline of the VS_REFERENCE group."""
    checkout = os.environ.get(REFERENCE_ENV)
    if not checkout:
        pytest.skip(f"set {REFERENCE_ENV} to a checkout of AlanjyHuang/HNeRV to time the reference trainer")
    cfg, _, tmp = setup
    d = cfg.data
    frames = load_frames(d.source, d.path, num_frames=d.num_frames, height=d.height, width=d.width, seed=d.seed,
                         max_frames=d.max_frames, resize=tuple(d.resize) if d.resize else None)
    frames_dir = write_frames(frames, tmp / "frames")
    seconds = benchmark.pedantic(reference_epoch_seconds, args=(checkout, frames_dir, tmp / "reference", 1 + ROUNDS),
                                 rounds=1, iterations=1)
    print(f"\nreference trainer epoch seconds: {seconds} (epoch 1 embeds every frame with CLIP: not timed)")
    record_seconds(VS_REFERENCE, "reference trainer (AlanjyHuang/HNeRV)", min(seconds[1:]))


def test_seed_style_epoch(benchmark, setup):
    cfg, device, tmp = setup
    task = _task(cfg, device)
    model = published_blocks(task.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    epochs = iter(range(1, 2 + ROUNDS))
    with SummaryWriter(str(tmp / "seed_tb")) as writer:
        def one_epoch():
            seed_style_epoch(task, model, optimizer, writer, task.train_batches(next(epochs)), device,
                             checkpoint=tmp / "seed_latest.pth")
        one_epoch()  # warm-up
        benchmark.pedantic(one_epoch, rounds=ROUNDS, iterations=1)
    _record("seed-style eager loop, fp32", benchmark)


@pytest.mark.parametrize("amp, compile_mode", [("none", "none"), ("auto", "auto")])
def test_hnerv_fast_epoch(benchmark, setup, amp, compile_mode):
    cfg, device, tmp = setup
    cfg.train.amp, cfg.train.compile = amp, compile_mode
    torch._dynamo.reset()
    task = _task(cfg, device)
    engine = Engine(task, cfg.train, device, tmp / f"ckpt_{amp}_{compile_mode}")
    with AsyncSummaryWriter(str(tmp / f"tb_{amp}_{compile_mode}")) as writer:
        task.writer = writer

        def one_epoch():
            cfg.train.stop_after = engine.start_epoch  # fit() runs exactly the next epoch
            engine.fit()
        one_epoch()  # warm-up (and compile)
        benchmark.pedantic(one_epoch, rounds=ROUNDS, iterations=1)
    label = f"hnerv_fast amp={amp}->{engine.amp} compile={compile_mode}->{engine.compile_mode}"
    _record(label, benchmark)


def _record(label, benchmark):
    record_ratio(GROUP, label, benchmark)
    if os.environ.get(REFERENCE_ENV):
        record_ratio(VS_REFERENCE, label, benchmark)
