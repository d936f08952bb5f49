"""The loop every trainer shares: compiled step, lr schedule, epochs, eval cadence, checkpoints.

The engine never names a model; it talks to a `Task`. Hot-loop rules (ARCHITECTURE.md): no `.item()`
or host copies in the step; metrics are one device vector per step, summed on device per epoch and
handed to the async logger as tensors; the learning rate is a tensor, so schedule changes don't recompile.
"""
from __future__ import annotations

import contextlib
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from hnerv_fast.config import EngineConfig
from hnerv_fast.ops import grouped_grad_norms
from hnerv_fast.train import checkpoint as ckpt


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but no CUDA device is available (use train.device=auto or cpu)")
    return device


def resolve_compile_mode(mode: str, device: torch.device) -> str:
    """`auto` compiles on GPU only: on CPU the compile time is not paid back (benchmarks/RESULTS.md)."""
    if mode == "auto":
        return "default" if device.type == "cuda" else "none"
    return mode


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass
class Batch:
    """Sample ids of one step and their loss weights (1, or 0 for padding in the last batch)."""

    ids: torch.Tensor
    weight: torch.Tensor


def epoch_batches(
    num_samples: int, batch_size: int, epoch: int, seed: int, drop_last: bool, device: torch.device
) -> list[Batch]:
    """Shuffled fixed-size batches. The order depends only on (seed, epoch), so a resumed run sees the
    same batches as an uninterrupted one. Shapes are static: the last partial batch is dropped, or
    padded (repeating ids) with zero weights."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_samples, generator=generator)
    batch_size = min(batch_size, num_samples)
    full, rest = divmod(num_samples, batch_size)
    weight = torch.ones(batch_size, device=device)
    batches = [Batch(chunk.to(device), weight) for chunk in order[: full * batch_size].split(batch_size)]
    if rest and not drop_last:
        pad = order[: batch_size - rest]
        ids = torch.cat([order[full * batch_size:], pad]).to(device)
        mask = torch.cat([torch.ones(rest), torch.zeros(batch_size - rest)]).to(device)
        batches.append(Batch(ids, mask))
    return batches


class Task(ABC):
    """What the engine needs from a model-specific trainer."""

    model: nn.Module
    metric_names: tuple[str, ...]  # order of the vector returned by forward_loss

    @abstractmethod
    def train_batches(self, epoch: int) -> list[Any]:
        """The batches of one epoch (static shapes)."""

    @abstractmethod
    def forward_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar loss to minimise, 1-D metric vector matching `metric_names`). Pure tensor code."""

    @abstractmethod
    def grad_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups whose gradient norms are measured (after unscaling)."""

    @abstractmethod
    def lr_multiplier(self, progress: float) -> float:
        """Learning-rate multiplier at training progress (epochs done, fractional) / total epochs."""

    @abstractmethod
    def make_optimizer(self, lr: torch.Tensor) -> torch.optim.Optimizer:
        ...

    def begin_epoch(self, epoch: int) -> None:
        """Called before each epoch (1-based), e.g. to switch the CLIP loss on after warmup."""

    def on_step(self, epoch: int, global_step: int, metrics: torch.Tensor, norms: torch.Tensor) -> None:
        """Per-step hook (logging of device tensors only)."""

    @abstractmethod
    def end_epoch(self, epoch: int, sums: torch.Tensor, steps: int, lr: float, seconds: float) -> float | None:
        """Log epoch means (sums = [metrics..., group norms...] summed over steps); run eval when due.
        Returns the epoch's score for "best" tracking (higher is better) or None when not evaluated."""

    @abstractmethod
    def checkpoint_names(self, epoch: int, improved: bool, last: bool) -> list[str]:
        """File names to (re)write after `epoch`."""

    def checkpoint_extra(self) -> dict[str, Any]:
        """Task state that goes into every checkpoint (config, best score, ...)."""
        return {}

    def load_extra(self, state: dict[str, Any]) -> None:
        pass

    def progress_postfix(self) -> dict[str, float]:
        """Host values for the progress bar (from the async logger; never a device sync)."""
        return {}


class Engine:
    def __init__(self, task: Task, cfg: EngineConfig, device: torch.device, checkpoint_dir: str | Path):
        self.task = task
        self.cfg = cfg
        self.device = device
        self.checkpoint_dir = Path(checkpoint_dir)
        self.lr = torch.tensor(cfg.lr * task.lr_multiplier(0.0), dtype=torch.float32, device=device)
        self.optimizer = task.make_optimizer(self.lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16" and device.type == "cuda")
        self.groups = task.grad_groups()
        self.start_epoch = 1
        self.global_step = 0
        self.best_score = -math.inf
        self.compile_mode = resolve_compile_mode(cfg.compile, device)
        # Forward + loss is compiled (its backward graph too, via AOTAutograd). The update is left eager:
        # it is already two fused launches (grouped grad norms, fused Adam), and torch.compile does not
        # trace into fused optimizers.
        self._forward = self._compiled(self._forward_eager)

    # ------------------------------------------------------------------------------ the step
    def _compiled(self, fn):
        if self.compile_mode == "none":
            return fn
        # fullgraph: a graph break in the step is a bug to fix, not a silent slowdown
        return torch.compile(fn, fullgraph=True, mode=None if self.compile_mode == "default" else self.compile_mode)

    def _autocast(self):
        if self.cfg.amp == "none" or self.device.type != "cuda":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _forward_eager(self, batch):
        with self._autocast():
            return self.task.forward_loss(batch)

    def train_step(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """forward + loss, backward, grouped grad norms (+ fused clip), optimizer step; no host sync."""
        self.optimizer.zero_grad(set_to_none=False)
        loss, metrics = self._forward(batch)
        self.scaler.scale(loss).backward()  # scale() is the identity when the scaler is disabled
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        norms = self._norms_and_clip()
        self.scaler.step(self.optimizer)  # plain optimizer.step() when disabled
        self.scaler.update()
        return metrics.detach(), norms

    def _norms_and_clip(self) -> torch.Tensor:
        """[total, *group norms] of the (unscaled) gradients; clips them in place when grad_clip is set."""
        grads = {name: [p.grad for p in params if p.grad is not None] for name, params in self.groups.items()}
        return grouped_grad_norms(grads, max_norm=self.cfg.grad_clip)

    # ------------------------------------------------------------------------------ the loop
    def fit(self) -> None:
        epochs = self.cfg.epochs
        last = self.cfg.stop_after or epochs
        for epoch in range(self.start_epoch, last + 1):
            self._run_epoch(epoch, epochs)
            self.start_epoch = epoch + 1  # a later fit() continues from here

    def _run_epoch(self, epoch: int, epochs: int) -> None:
        task = self.task
        task.model.train()
        task.begin_epoch(epoch)
        batches = task.train_batches(epoch)
        steps = len(batches)
        sums = None
        started = time.perf_counter()
        bar = self._progress(epoch, epochs, steps)
        for i, batch in enumerate(batches):
            self.lr.fill_(self.cfg.lr * task.lr_multiplier((epoch - 1 + i / steps) / epochs))
            metrics, norms = self.train_step(batch)
            self.global_step += 1
            step_vec = torch.cat([metrics.float(), norms.float()])
            sums = step_vec.clone() if sums is None else sums.add_(step_vec)
            task.on_step(epoch, self.global_step, metrics, norms)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(task.progress_postfix(), refresh=False)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - started
        lr = self.cfg.lr * task.lr_multiplier((epoch - 1 + (steps - 1) / steps) / epochs)
        score = task.end_epoch(epoch, sums, steps, lr, seconds)
        improved = score is not None and score > self.best_score
        if improved:
            self.best_score = score
        self.save(task.checkpoint_names(epoch, improved, epoch == epochs), epoch)

    def _progress(self, epoch: int, epochs: int, steps: int):
        if not self.cfg.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True)

    # ------------------------------------------------------------------------ checkpoints
    def state(self, epoch: int) -> dict[str, Any]:
        return {
            "model_state_dict": self.task.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scaler_state_dict": self.scaler.state_dict(),
            "epoch": epoch,
            "global_step": self.global_step,
            "best_score": self.best_score,
            "rng": ckpt.rng_state(),
            **self.task.checkpoint_extra(),
        }

    def save(self, names: list[str], epoch: int) -> None:
        if not names:
            return
        state = self.state(epoch)
        for name in names:
            ckpt.save_atomic(state, self.checkpoint_dir / name)

    def resume(self, state: dict[str, Any]) -> None:
        """Continue after the checkpoint's epoch, exactly where an uninterrupted run would be."""
        self.task.model.load_state_dict(state["model_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        for group in self.optimizer.param_groups:  # keep our device-resident lr tensor the live one
            self.lr.copy_(group["lr"])
            group["lr"] = self.lr
        self.scaler.load_state_dict(state["scaler_state_dict"])
        self.start_epoch = int(state["epoch"]) + 1
        self.global_step = int(state["global_step"])
        self.best_score = float(state["best_score"])
        ckpt.set_rng_state(state["rng"])
        self.task.load_extra(state)
