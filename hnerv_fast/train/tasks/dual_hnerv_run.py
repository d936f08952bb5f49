"""Entry for the dual-head HNeRV trainer: wires config -> task -> engine -> logs/checkpoints."""
from __future__ import annotations

from pathlib import Path

from hnerv_fast.config import DualHNeRVConfig
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.logging.layouts import dual_layout
from hnerv_fast.ops import set_backend
from hnerv_fast.train import checkpoint as ckpt
from hnerv_fast.train import distributed
from hnerv_fast.train.engine import Engine, pick_device, seed_everything
from hnerv_fast.train.runner import write_config
from hnerv_fast.train.tasks.dual_hnerv import DualHNeRVTask, run_dir


def run(cfg: DualHNeRVConfig, resume: str | None = None) -> Path:
    device = pick_device(cfg.train.device)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    set_backend(cfg.ops.backend)
    out = run_dir(cfg)
    state = None
    if resume is not None:
        state = ckpt.load(out / "latest.pt" if resume == "latest" else resume, map_location=device)
    task = DualHNeRVTask(cfg, device)  # loads data + CLIP targets: bad input fails before anything is written
    engine = Engine(task, cfg.train, device, checkpoint_dir=out)
    if state is not None:
        engine.resume(state)
    logdir = out / "tensorboard"
    main = distributed.is_main()  # under torchrun only rank 0 writes config, logs and checkpoints
    if main:
        write_config(cfg, out)
    with AsyncSummaryWriter(str(logdir)) if main else distributed.NullWriter() as writer:
        task.writer = writer
        writer.add_custom_scalars(dual_layout())
        engine.fit()
    if main:
        print(f"done: checkpoints in {out}\nTensorBoard logs: {logdir}\n  view with: tensorboard --logdir {logdir}")
    return out
