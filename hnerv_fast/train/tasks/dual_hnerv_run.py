"""The dual-head HNeRV trainer's builder (registry entry `dual_hnerv`): one task, one Engine."""
from __future__ import annotations

from hnerv_fast.config import DualHNeRVConfig
from hnerv_fast.logging.layouts import dual_layout
from hnerv_fast.train import checkpoint as ckpt
from hnerv_fast.train.engine import Engine
from hnerv_fast.train.plan import RunPlan
from hnerv_fast.train.tasks.dual_hnerv import DualHNeRVTask, run_dir


def build(cfg: DualHNeRVConfig, device, resume: str | None) -> RunPlan:
    out = run_dir(cfg)
    state = None
    if resume is not None:
        state = ckpt.load(out / "latest.pt" if resume == "latest" else resume, map_location=device)

    def fits(writer):
        task = DualHNeRVTask(cfg, device, writer)  # loads data + CLIP targets
        engine = Engine(task, cfg.train, device, checkpoint_dir=out)
        if state is not None:
            engine.resume(state)
        yield engine

    return RunPlan(cfg=cfg, checkpoint_dir=out, logdir=out / "tensorboard", config_dir=out, layout=dual_layout(),
                   fits=fits)
