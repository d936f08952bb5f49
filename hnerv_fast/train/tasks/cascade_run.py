"""The Hybrid ViT cascade's builder (registry entry `cascade`): config -> data -> one Engine per stage.

Stages are trained coarse to fine (``train.stages``, default all), each with its own Engine and
optimizer. Everything that can fail on bad input (config, data folder, resume checkpoint, earlier
stages' weights for generated conditioning) is checked before the first file is written.

Outputs (``output.checkpoint_dir``): ``{stage}_best.pt`` (lowest val loss), ``{stage}_epoch_{N}.pt``
(every ``train.save_every`` epochs, and at ``train.stop_after``), ``{stage}_final.pt``; TensorBoard
logs in ``tensorboard/<run_name>/`` (run_name: ``output.run_name``, else ``cascade-<timestamp>``;
a resumed run keeps the checkpoint's run name, so its curves continue in the same folder).
Under torchrun every rank trains (and evaluates) each stage; rank 0 alone prints, logs (TensorBoard,
W&B) and writes checkpoints; all ranks read the resume checkpoint and earlier stages' weights.

The checkpoint names carry no run name (the timestamp only names the TensorBoard folder): the same command
always writes into the same files. A fresh run (no ``--resume``) therefore refuses a ``checkpoint_dir``
that already holds ``{stage}_*.pt`` of a stage it is about to train (``checkpoint.RunExistsError``, exit code 2)
unless ``output.overwrite=true`` (which removes them once the data has loaded: ``earlier_run``). Earlier stages'
checkpoints are fine there: a run of ``train.stages=[stage_32]`` reads ``stage_16_final.pt`` from that folder
for its conditioning.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from hnerv_fast.config import CascadeConfig, ConfigError, to_dict
from hnerv_fast.logging.layouts import cascade_layout
from hnerv_fast.logging.wandb_mirror import cascade_wandb_mirror
from hnerv_fast.train import checkpoint as ckpt
from hnerv_fast.train import distributed
from hnerv_fast.train.engine import Engine
from hnerv_fast.train.plan import RunPlan
from hnerv_fast.train.tasks.cascade import CascadeStageTask, Conditioning, load_cascade_data


def build(cfg: CascadeConfig, device: torch.device, resume: str | None) -> RunPlan:
    out = Path(cfg.output.checkpoint_dir)
    order = cfg.cascade_order()
    plan = cfg.stages_to_train()
    state = done = None
    overwrite = resume is None and cfg.output.overwrite
    if resume is not None:
        path = latest_checkpoint(out, order) if resume == "latest" else Path(resume)
        state = ckpt.load(path, map_location=device)
        stage = state.get("stage")
        if stage not in plan:
            raise ConfigError(f"--resume: {path} is a checkpoint of stage {stage!r}, which is not among the "
                              f"stages to train {plan} (train.stages)")
        plan = plan[plan.index(stage):]
        # the same phantoms / CT cases and stage models (the CT folder may have moved)
        free = {"data": ("root",), "stages": (), "diffusion": ("ddim_steps", "physics_weight", "physics_at")}
        ckpt.check_same_run(_without_stage_schedules(state.get("config", {})), _without_stage_schedules(to_dict(cfg)),
                            free, path)
        done = _nothing_left(cfg, state, path, plan)
        if cfg.output.run_name is None:
            cfg = _with_run_name(cfg, state.get("config", {}).get("output", {}).get("run_name"))
    elif not cfg.output.overwrite:
        refuse_overwrite(out, plan)
    if cfg.output.run_name is None:  # rank 0's clock names the run on every rank
        cfg = _with_run_name(cfg, distributed.broadcast_object(time.strftime("cascade-%Y%m%d-%H%M%S")))
    logdir = out / "tensorboard" / cfg.output.run_name
    say = print if distributed.is_main() else (lambda *args, **kwargs: None)

    def fits(writer):
        data = load_cascade_data(cfg, device)  # bad data fails here, before anything is written
        conditioning = Conditioning(cfg, data, device, out)
        conditioning.check_available(plan[0])
        for i, name in enumerate(plan):
            prev = conditioning.for_stage(name)  # generated: one DDIM pass of the earlier stage(s), cached
            torch.manual_seed(cfg.train.seed + order.index(name))  # each stage starts from its own seed
            task = CascadeStageTask(cfg, name, data, prev, device, writer)
            engine = Engine(task, cfg.stage_train(name), device, checkpoint_dir=out)
            if i == 0:
                if state is not None:
                    engine.resume(state, f"{name} from {resume}")
                say(f"cascade {order}: training {plan} on {device} ({len(data.train_rows)} train / "
                    f"{len(data.val_rows)} val cases, conditioning={cfg.train.conditioning}"
                    + (f", {distributed.world_size()} processes" if distributed.enabled() else "") + ")")
            yield engine
            conditioning.models[name] = task.model
            stop = engine.cfg.stop_after
            if stop is not None:
                last = f"{name}_epoch_{stop}.pt" if stop < engine.cfg.epochs else f"{name}_final.pt"
                say(f"stopped after epoch {stop} of {name} (train.stop_after); continue with --resume {out / last}")
                return

    def mirrors() -> list:
        w = cfg.wandb
        mirror = cascade_wandb_mirror(w.mode, w.project, w.entity, cfg.output.run_name, logdir, to_dict(cfg),
                                      cfg.stages_to_train())
        return [] if mirror is None else [mirror]

    return RunPlan(cfg=cfg, checkpoint_dir=out, logdir=logdir, config_dir=logdir,
                   layout=cascade_layout(cfg.stages_to_train()), fits=fits, mirrors=mirrors,
                   view_dir=out / "tensorboard", done=done,
                   replaced=lambda: earlier_run(out, plan, logdir) if overwrite else [])


STAGE_SCHEDULE = ("epochs", "batch_size", "lr")  # a stage's own training settings: a resumed run may change them


def _without_stage_schedules(config: dict) -> dict:
    """`config` (a plain dict) with each stage's architecture only, as check_same_run compares it."""
    stages = {name: {k: v for k, v in stage.items() if k not in STAGE_SCHEDULE}
              for name, stage in config.get("stages", {}).items()}
    return {**config, "stages": stages}


def _nothing_left(cfg: CascadeConfig, state: dict, path: Path, plan: list[str]) -> str | None:
    """The message when the resumed stage (`plan[0]`) has no epoch left and no later stage trains after it."""
    stage, train = plan[0], cfg.stage_train(plan[0])
    if len(plan) > 1 and train.stop_after is None:  # the next stages still train
        return None
    key = f"stages.{stage}.epochs" if cfg.stages[stage].epochs is not None else "train.epochs"
    return ckpt.nothing_left(state, train, path, key)


def _with_run_name(cfg: CascadeConfig, name: str | None) -> CascadeConfig:
    return dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, run_name=name))


def stage_checkpoints(folder: Path, order: list[str]) -> list[tuple[tuple[int, int, int], Path]]:
    """Every ``{stage}_{best,epoch_N,final}.pt`` of the stages `order` in `folder`, each with its sort key
    (mtime, stage index, epoch: the largest is the newest)."""
    found = []
    for k, name in enumerate(order):
        for p in folder.glob(f"{name}_*.pt"):
            rest = p.stem[len(name) + 1:]
            if rest in ("best", "final") or (rest.startswith("epoch_") and rest[6:].isdigit()):
                epoch = int(rest[6:]) if rest.startswith("epoch_") else (1 << 30 if rest == "final" else -1)
                found.append(((p.stat().st_mtime_ns, k, epoch), p))
    return found


def latest_checkpoint(folder: Path, order: list[str]) -> Path:
    """``--resume`` without a path: the newest ``{stage}_{best,epoch_N,final}.pt`` of this cascade."""
    found = stage_checkpoints(folder, order)
    if not found:
        raise ckpt.CheckpointError(f"checkpoint not found: no {{stage}}_*.pt of stages {order} in {folder}")
    return max(found)[1]


def earlier_run(folder: Path, stages: list[str], logdir: Path) -> list[Path]:
    """What output.overwrite=true replaces: the checkpoints of the `stages` this run trains (earlier stages'
    stay: they condition the later ones) and the event files of a TensorBoard folder named like this run's."""
    return [p for _, p in sorted(stage_checkpoints(folder, stages))] + sorted(logdir.glob(ckpt.EVENT_FILES))


def refuse_overwrite(folder: Path, stages: list[str]) -> None:
    """RunExistsError when `folder` holds checkpoints of the `stages` this run would train (and so rewrite)."""
    def newest_first() -> list[Path]:
        return [p for _, p in sorted(stage_checkpoints(folder, stages), reverse=True)] if folder.is_dir() else []

    ckpt.refuse_overwrite(folder, newest_first, "output.checkpoint_dir")
