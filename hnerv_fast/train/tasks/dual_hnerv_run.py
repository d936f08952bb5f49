"""The dual-head HNeRV trainer's builder (registry entry `dual_hnerv`): one task, one Engine.

The run folder (``output.output_dir/exp_id/param_str``) has no timestamp: the same command always
writes into the same folder. A fresh run (no ``--resume``) therefore refuses a folder that already holds
``latest.pt`` / ``best.pt`` (``checkpoint.RunExistsError``, exit code 2) unless ``output.overwrite=true``; the check
comes before the CLIP targets are computed and before anything is written. With ``output.overwrite=true`` the
earlier run's checkpoints and event files are removed once the data has loaded (``earlier_run``).
"""
from __future__ import annotations

from pathlib import Path

from hnerv_fast.config import DualHNeRVConfig, to_dict
from hnerv_fast.logging.layouts import dual_layout
from hnerv_fast.train import checkpoint as ckpt
from hnerv_fast.train.engine import Engine
from hnerv_fast.train.plan import RunPlan
from hnerv_fast.train.tasks.dual_hnerv import DualHNeRVTask, run_dir

CHECKPOINTS = ("latest.pt", "best.pt")  # what DualHNeRVTask.checkpoint_names writes, newest first


def build(cfg: DualHNeRVConfig, device, resume: str | None) -> RunPlan:
    out = run_dir(cfg)
    state = done = None
    overwrite = resume is None and cfg.output.overwrite
    if resume is not None:
        path = out / "latest.pt" if resume == "latest" else Path(resume)
        state = ckpt.load(path, map_location=device)
        # before the CLIP targets: the same model on the same frames (the video file may have moved)
        ckpt.check_same_run(state.get("config", {}), to_dict(cfg), {"model": (), "data": ("path",)}, path)
        done = ckpt.nothing_left(state, cfg.train, path)
    elif not cfg.output.overwrite:
        refuse_overwrite(out)

    def fits(writer):
        task = DualHNeRVTask(cfg, device, writer)  # loads data + CLIP targets
        engine = Engine(task, cfg.train, device, checkpoint_dir=out)
        if state is not None:
            engine.resume(state, f"from {path}")
        yield engine

    return RunPlan(cfg=cfg, checkpoint_dir=out, logdir=out / "tensorboard", config_dir=out, layout=dual_layout(),
                   fits=fits, done=done, replaced=lambda: earlier_run(out) if overwrite else [])


def checkpoints(out: Path) -> list[Path]:
    return [out / name for name in CHECKPOINTS if (out / name).is_file()]


def refuse_overwrite(out: Path) -> None:
    """RunExistsError when the run folder `out` holds this trainer's checkpoints."""
    ckpt.refuse_overwrite(out, lambda: checkpoints(out), "output.output_dir / exp_id / param_str")


def earlier_run(out: Path) -> list[Path]:
    """What output.overwrite=true replaces in the run folder: the checkpoints and TensorBoard event files."""
    return checkpoints(out) + sorted((out / "tensorboard").glob(ckpt.EVENT_FILES))
