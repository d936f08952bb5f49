"""Optional Weights & Biases mirror of the cascade's scalars (an AsyncSummaryWriter mirror).

`wandb` is imported only when a run asks for it (wandb.mode offline/online); without the package the run
logs to TensorBoard only, after one warning.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from hnerv_fast.logging.layouts import CascadeTags as T


class WandbMirror:
    """Every scalar batch goes to W&B too (called on the writer thread).

    Each stage gets its own x axes: ``{stage}/global_step`` for the ``*_step`` tags and ``{stage}/epoch``
    for the per-epoch tags (W&B's own step must increase, and the cascade restarts both per stage).
    """

    def __init__(self, run, stages: list[str]):
        self.run = run
        for s in stages:
            run.define_metric(f"{s}/global_step", hidden=True)
            run.define_metric(f"{s}/epoch", hidden=True)
            for n in T.STEP:
                run.define_metric(T.tag(s, n), step_metric=f"{s}/global_step")
            for n in T.PER_EPOCH:
                run.define_metric(T.tag(s, n), step_metric=f"{s}/epoch")

    def log(self, values: dict[str, float], step: int) -> None:
        stage = next(iter(values)).split("/", 1)[0]
        axis = "global_step" if all(k.endswith("_step") for k in values) else "epoch"
        self.run.log({**values, f"{stage}/{axis}": step})

    def close(self) -> None:
        self.run.finish()


def cascade_wandb_mirror(mode: str, project: str, entity: str | None, run_name: str, logdir: Path,
                         config: dict[str, Any], stages: list[str]) -> WandbMirror | None:
    """None when mode=disabled, or (with one warning) when the optional `wandb` package is missing."""
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        warnings.warn(f"wandb.mode={mode} but the optional `wandb` package is not installed: "
                      f"logging to TensorBoard only (pip install wandb)", stacklevel=2)
        return None
    run = wandb.init(project=project, entity=entity, name=run_name, mode=mode, dir=str(logdir), config=config)
    return WandbMirror(run, stages)
