"""Entry for the Hybrid ViT cascade trainer: config -> data -> one Engine per stage -> logs/checkpoints.

Stages are trained coarse to fine (``train.stages``, default all), each with its own Engine and
optimizer. Everything that can fail on bad input (config, data folder, resume checkpoint, earlier
stages' weights for generated conditioning) is checked before the first file is written.

Outputs (``output.checkpoint_dir``): ``{stage}_best.pt`` (lowest val loss), ``{stage}_epoch_{N}.pt``
(every ``train.save_every`` epochs, and at ``train.stop_after``), ``{stage}_final.pt``; TensorBoard
logs in ``tensorboard/<run_name>/`` (run_name: ``output.run_name``, else ``cascade-<timestamp>``;
a resumed run keeps the checkpoint's run name, so its curves continue in the same folder).
Under torchrun every rank trains (and evaluates) each stage; rank 0 alone prints, logs (TensorBoard,
W&B) and writes checkpoints; all ranks read the resume checkpoint and earlier stages' weights.
"""
from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path

import torch

from hnerv_fast.config import CascadeConfig, ConfigError, to_dict
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.logging.layouts import CascadeTags as T
from hnerv_fast.logging.layouts import cascade_layout
from hnerv_fast.ops import set_backend
from hnerv_fast.train import checkpoint as ckpt
from hnerv_fast.train import distributed
from hnerv_fast.train.engine import Engine, pick_device, seed_everything
from hnerv_fast.train.runner import write_config
from hnerv_fast.train.tasks.cascade import CascadeStageTask, Conditioning, load_cascade_data, stage_config


def run(cfg: CascadeConfig, resume: str | None = None) -> Path:
    device = pick_device(cfg.train.device)
    set_backend(cfg.ops.backend)
    out = Path(cfg.output.checkpoint_dir)
    order = cfg.cascade_order()
    plan = cfg.stages_to_train()
    for name in order:
        stage_config(cfg, name)  # model hyper-parameter errors before any work

    state = None
    if resume is not None:
        path = latest_checkpoint(out, order) if resume == "latest" else Path(resume)
        state = ckpt.load(path, map_location=device)
        stage = state.get("stage")
        if stage not in plan:
            raise ConfigError(f"--resume: {path} is a checkpoint of stage {stage!r}, which is not among the "
                              f"stages to train {plan} (train.stages)")
        plan = plan[plan.index(stage):]
        if cfg.output.run_name is None:
            cfg = _with_run_name(cfg, state.get("config", {}).get("output", {}).get("run_name"))
    if cfg.output.run_name is None:  # rank 0's clock names the run on every rank
        cfg = _with_run_name(cfg, distributed.broadcast_object(time.strftime("cascade-%Y%m%d-%H%M%S")))

    seed_everything(cfg.train.seed, cfg.train.deterministic)
    data = load_cascade_data(cfg, device)  # bad data fails here, before anything is written
    conditioning = Conditioning(cfg, data, device, out)
    conditioning.check_available(plan[0])

    def build(name: str) -> tuple[CascadeStageTask, Engine]:
        prev = conditioning.for_stage(name)  # generated: one DDIM pass of the earlier stage(s), cached
        torch.manual_seed(cfg.train.seed + order.index(name))  # each stage starts from its own seed
        task = CascadeStageTask(cfg, name, data, prev, device)
        return task, Engine(task, cfg.stage_engine(name), device, checkpoint_dir=out)

    first = build(plan[0])
    if state is not None:
        try:
            first[1].resume(state)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ckpt.CheckpointError(f"cannot resume {plan[0]} from {resume} (does the config still match "
                                       f"the checkpoint?): {str(exc).splitlines()[0]}") from exc

    logdir = out / "tensorboard" / cfg.output.run_name
    main = distributed.is_main()
    say = print if main else (lambda *args, **kwargs: None)
    if main:
        write_config(cfg, logdir)
    mirrors = wandb_mirrors(cfg, logdir) if main else []
    say(f"cascade {order}: training {plan} on {device} ({len(data.train_rows)} train / "
        f"{len(data.val_rows)} val cases, conditioning={cfg.train.conditioning}"
        + (f", {distributed.world_size()} processes" if distributed.enabled() else "") + ")")
    try:
        with AsyncSummaryWriter(str(logdir), mirrors=mirrors) if main else distributed.NullWriter() as writer:
            writer.add_custom_scalars(cascade_layout(cfg.stages_to_train()))
            for i, name in enumerate(plan):
                task, engine = first if i == 0 else build(name)
                task.writer = writer
                engine.fit()
                conditioning.models[name] = task.model
                stop = engine.cfg.stop_after
                if stop is not None:
                    last = f"{name}_epoch_{stop}.pt" if stop < engine.cfg.epochs else f"{name}_final.pt"
                    say(f"stopped after epoch {stop} of {name} (train.stop_after); continue with "
                        f"--resume {out / last}")
                    break
    finally:
        for mirror in mirrors:
            mirror.close()
    say(f"done: checkpoints in {out}\nTensorBoard logs: {logdir}\n  view with: tensorboard --logdir {out / 'tensorboard'}")
    return out


def _with_run_name(cfg: CascadeConfig, name: str | None) -> CascadeConfig:
    return dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, run_name=name))


def latest_checkpoint(folder: Path, order: list[str]) -> Path:
    """``--resume`` without a path: the newest ``{stage}_{best,epoch_N,final}.pt`` of this cascade."""
    found = []
    for k, name in enumerate(order):
        for p in folder.glob(f"{name}_*.pt"):
            rest = p.stem[len(name) + 1:]
            if rest in ("best", "final") or (rest.startswith("epoch_") and rest[6:].isdigit()):
                epoch = int(rest[6:]) if rest.startswith("epoch_") else (1 << 30 if rest == "final" else -1)
                found.append(((p.stat().st_mtime_ns, k, epoch), p))
    if not found:
        raise ckpt.CheckpointError(f"checkpoint not found: no {{stage}}_*.pt of stages {order} in {folder}")
    return max(found)[1]


# ------------------------------------------------------------------------------- W&B (optional)
class WandbMirror:
    """AsyncSummaryWriter mirror: every scalar batch goes to W&B too (on the writer thread).

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
            for n in T.EPOCH + T.PERF:
                run.define_metric(T.tag(s, n), step_metric=f"{s}/epoch")

    def log(self, values: dict[str, float], step: int) -> None:
        stage = next(iter(values)).split("/", 1)[0]
        axis = "global_step" if all(k.endswith("_step") for k in values) else "epoch"
        self.run.log({**values, f"{stage}/{axis}": step})

    def close(self) -> None:
        self.run.finish()


def wandb_mirrors(cfg: CascadeConfig, logdir: Path) -> list[WandbMirror]:
    """[] when wandb.mode=disabled; with offline/online, a W&B mirror if `wandb` is importable, else
    one warning and TensorBoard only."""
    if cfg.wandb.mode == "disabled":
        return []
    try:
        import wandb
    except ImportError:
        warnings.warn(f"wandb.mode={cfg.wandb.mode} but the optional `wandb` package is not installed: "
                      f"logging to TensorBoard only (pip install wandb)", stacklevel=2)
        return []
    run = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, name=cfg.output.run_name,
                     mode=cfg.wandb.mode, dir=str(logdir), config=to_dict(cfg))
    return [WandbMirror(run, cfg.stages_to_train())]


if __name__ == "__main__":  # pragma: no cover - use python -m hnerv_fast.train --config ...
    sys.exit("use: python -m hnerv_fast.train --config configs/cascade_tiny.yaml")
