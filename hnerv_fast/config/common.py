"""What both tasks share: the error type, the check helper, ops / engine sections, the lr schedule."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple, Optional

from hnerv_fast.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad configuration; the message names the offending key."""


def check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


# Name lists the schema validates against. The runtime owners (ops/_backends.py BACKENDS, ...) import torch,
# so config keeps its own copies; tests/test_config.py checks that they agree.
COMPILE_MODES = ("auto", "none", "default", "max-autotune", "reduce-overhead")
AMP_MODES = ("auto", "none", "bf16", "fp16")
OPS_BACKENDS = ("auto", "reference", "cpp", "cuda", "triton")


@dataclass
class OpsConfig:
    backend: str = "auto"  # auto | reference | cpp | cuda | triton

    def validate(self) -> None:
        check(self.backend in OPS_BACKENDS, "ops.backend", f"{self.backend!r} not in {OPS_BACKENDS}")


@dataclass
class EngineConfig:
    """Loop settings every trainer shares (read by train/engine.py)."""

    epochs: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto (one GPU: default inside the whole-step CUDA graph of graph_step; DDP: default; CPU: default for runs of
    # >= 1500 steps) | none | default | max-autotune | reduce-overhead
    compile: str = "auto"
    # GPU, one process: the whole optimizer step (forward, backward, norms, update) as one CUDA graph
    # (train/step_graph.py), also what compile=auto does there; the forward is compiled per `compile`, without
    # graphs of its own
    graph_step: bool = False
    amp: str = "auto"  # auto | none | bf16 | fp16 (fp16: GPU + GradScaler); see hnerv_fast/precision.py
    seed: int = 1
    deterministic: bool = False
    drop_last: bool = True  # static shapes: drop the last partial batch, else pad it with a zero-weight mask
    grad_clip: Optional[float] = None
    stop_after: Optional[int] = None  # end this invocation after that epoch (schedule still spans `epochs`); resume later
    log_every_steps: int = 1
    progress: bool = True
    # optimizer step = grad_accum_steps micro-batches of batch_size per process (torchrun: x world_size);
    # losses are divided by it, metrics averaged over the micro-batches, lr/steps/grad norms per optimizer step
    grad_accum_steps: int = 1
    dist_timeout_s: int = 1800  # torchrun: a collective waiting longer than this fails the job (dead/stuck rank)
    # a step with a non-finite loss or gradient norm is skipped; this many in a row stop the run (exit code 3)
    max_bad_steps: int = 10


def validate_engine(train: EngineConfig, prefix: str = "train", check_stop_after: bool = True) -> None:
    check(train.epochs >= 1, f"{prefix}.epochs", f"must be >= 1, got {train.epochs}")
    check(train.batch_size >= 1, f"{prefix}.batch_size", f"must be >= 1, got {train.batch_size}")
    check(train.lr > 0, f"{prefix}.lr", f"must be > 0, got {train.lr}")
    check(train.compile in COMPILE_MODES, f"{prefix}.compile", f"{train.compile!r} not in {COMPILE_MODES}")
    check(train.amp in AMP_MODES, f"{prefix}.amp", f"{train.amp!r} not in {AMP_MODES}")
    check(train.log_every_steps >= 1, f"{prefix}.log_every_steps", "must be >= 1")
    check(train.grad_accum_steps >= 1, f"{prefix}.grad_accum_steps", f"must be >= 1, got {train.grad_accum_steps}")
    check(train.dist_timeout_s >= 1, f"{prefix}.dist_timeout_s", f"must be >= 1, got {train.dist_timeout_s}")
    check(train.max_bad_steps >= 1, f"{prefix}.max_bad_steps", f"must be >= 1, got {train.max_bad_steps}")
    if check_stop_after:  # the cascade bounds it per stage instead (a stage may run more epochs than train.epochs)
        check(train.stop_after is None or 1 <= train.stop_after <= train.epochs, f"{prefix}.stop_after",
              f"must be between 1 and {prefix}.epochs ({train.epochs})")
    check(
        train.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?", train.device) is not None,
        f"{prefix}.device",
        f"{train.device!r} is not auto, cpu, cuda or cuda:N",
    )


class Cosine(NamedTuple):
    """Parsed `cosine_<up_ratio>_<up_pow>_<min_lr>` (the arguments of train/schedule.py cosine_multiplier)."""

    up_ratio: float
    up_pow: float
    min_lr: float


SCHEDULE_RE = re.compile(r"cosine_([0-9.]+)_([0-9.]+)_([0-9.]+)")


def parse_schedule(text: str) -> Cosine:
    m = SCHEDULE_RE.fullmatch(text)
    check(m is not None, "train.lr_schedule", f"{text!r} is not cosine_<up_ratio>_<up_pow>_<min_lr>")
    schedule = Cosine(*(float(g) for g in m.groups()))
    check(0 <= schedule.up_ratio < 1, "train.lr_schedule", f"up_ratio {schedule.up_ratio} must be in [0, 1)")
    return schedule
