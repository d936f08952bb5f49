"""The loop every trainer shares: compiled step, lr schedule, epochs, eval cadence, checkpoints.

The engine never names a model; it talks to a `Task`. Hot-loop rules (ARCHITECTURE.md, repo root): no `.item()`
or host copies in the step; metrics are one device vector per step, summed on device per epoch and
handed to the async logger as tensors; the learning rate is a tensor, so schedule changes don't recompile.

Data parallel (torchrun, see train/distributed.py): the engine wraps `task.model` in DDP and passes the
wrapper to `task.forward_loss` as the module to call (its backward hooks average the gradients over ranks);
`epoch_batches` gives each rank its shard of every global batch; per-epoch metric sums are averaged over
ranks before `end_epoch`; only rank 0 shows progress and writes checkpoints.

Gradient accumulation (`train.grad_accum_steps = k`): one optimizer step = k micro-batches of
`train.batch_size` per rank (DDP's all-reduce only after the last one, via `no_sync`), each loss divided
by k. The step's metrics are the mean over its micro-batches; lr, `global_step`, logged steps and
gradient norms (measured once, on the accumulated and all-reduced gradients) count optimizer steps.
So world_size x k x batch_size samples make one step, like one process with that batch size (same samples;
the cascade draws its diffusion noise per micro-batch, so with k > 1 it matches in distribution only).

CUDA graphs (`train.compile=reduce-overhead` / `max-autotune`, torch's CUDA graph trees): a replay
overwrites the previous replay's outputs, and every input without a static address is copied into the
graph's own buffer on each replay. So: each step begins with `cudagraph_mark_step_begin`; values that
outlive the next replay (micro-batch metrics under accumulation, eval chunks) are copied out; gradients
exist before the first capture (a `.grad` first made by a captured backward would live in the graph's
pool and be overwritten); and the tensors a task reads as attributes in its compiled functions (its
dataset, flags: `Task.static_inputs`) get static addresses, so they are read in place, never copied.
`train.graph_step` captures the whole optimizer step instead (train/step_graph.py); it relies on the same
fixed addresses.

Perf (per epoch, `perf.EpochMeter`): step time, samples/s and peak memory of the epoch's steps go to
`Task.end_epoch`, measured without a host sync in the steps.
"""
from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from hnerv_fast.config import ConfigError, EngineConfig
from hnerv_fast.device import resolve_device
from hnerv_fast.ops import grouped_grad_norms
from hnerv_fast.train import checkpoint as ckpt
from hnerv_fast import precision
from hnerv_fast.train import distributed
from hnerv_fast.train.interrupts import deferred_sigint
from hnerv_fast.train.perf import EpochMeter
from hnerv_fast.train.step_graph import StepGraph


def pick_device(name: str) -> torch.device:
    """The run's device (`resolve_device`); under torchrun, `auto` / `cuda` mean this rank's GPU (cuda:LOCAL_RANK)."""
    several = distributed.world_size() > 1
    if several and name.startswith("cuda:"):
        raise ConfigError(f"train.device={name} would put every torchrun rank on the same GPU; use "
                          f"train.device=auto or cuda (rank i uses cuda:LOCAL_RANK)")
    if several and name in ("auto", "cuda") and torch.cuda.is_available():
        device = distributed.cuda_device_for_rank(name)
        torch.cuda.set_device(device)
        return device
    return resolve_device(name, "train.device")


# On CPU torch.compile costs ~25 s (dual default model, 2 cores) and saves ~8 % of a step (22-28 ms of
# ~260-450 ms, benchmarks/RESULTS.md): it pays back after ~1000 steps, so `auto` compiles a CPU run of at
# least this many optimizer steps (the dual default config: 8100; the tiny configs: a few hundred).
CPU_COMPILE_MIN_STEPS = 1500


def resolve_compile_mode(mode: str, device: torch.device, planned_steps: int) -> str:
    """`auto` compiles on GPU (on one GPU inside the whole-step CUDA graph: `wants_graph_step`), and on CPU when
    the run is long enough to pay the compile time back."""
    if mode != "auto":
        return mode
    if device.type == "cuda" or planned_steps >= CPU_COMPILE_MIN_STEPS:
        return "default"
    return "none"


def wants_graph_step(graph_step: bool, compile_mode: str, device: torch.device, world_size: int) -> bool:
    """`train.graph_step`, or `train.compile=auto` on one GPU: the whole step as one CUDA graph. On an H200 the
    dual default step took 1.8 ms so, against 3.1 ms with reduce-overhead's graphs of forward and backward only
    and 5.9 ms compiled without graphs (benchmarks/RESULTS_gpu.md). Not under DDP: never run on several GPUs."""
    return graph_step or (compile_mode == "auto" and device.type == "cuda" and world_size == 1)


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass
class Batch:
    """Sample ids of one micro-batch (this rank's shard) and their loss weights (1, or 0 for padding).

    A weighted mean is `sum(weight * x) / denom`: `denom` is the weight sum of the whole optimizer step
    divided by its micro-batches (world_size x grad_accum_steps), so averaging over ranks (DDP) and
    micro-steps gives the weighted mean over the step's samples. In one process without accumulation
    it is `weight.sum()`. Rows `offset:offset+len(ids)` of the `global_size` rows that all ranks' shards
    of this micro-batch make, for per-sample noise drawn for the global batch; `samples` of those rows are real
    (weight 1), the rest padding (counted on the host when the batches are cut: Perf/* samples/s)."""

    ids: torch.Tensor
    weight: torch.Tensor
    denom: torch.Tensor | None = None
    offset: int = 0
    global_size: int = 0
    samples: int | None = None

    def __post_init__(self):
        if self.denom is None:
            self.denom = self.weight.sum()
        if not self.global_size:
            self.global_size = self.offset + self.ids.shape[0]
        if self.samples is None:
            self.samples = self.global_size


def epoch_batches(
    num_samples: int, batch_size: int, epoch: int, seed: int, drop_last: bool, device: torch.device,
    grad_accum_steps: int = 1, rank: int | None = None, world_size: int | None = None,
) -> list[Batch]:
    """This rank's micro-batches of one epoch, `grad_accum_steps` per optimizer step.

    The epoch order depends only on (seed, epoch), so a resumed run sees the same batches as an
    uninterrupted one and all ranks agree on it. It is cut into optimizer steps of
    world_size x grad_accum_steps x batch_size samples (one process with that batch size sees the same
    steps); each step into grad_accum_steps micro-batches, each micro-batch into world_size contiguous
    shards. Shapes are static: the last partial step is dropped, or padded (repeating ids) with zero
    weights. rank / world_size default to the current process group (0 / 1 without one)."""
    rank = distributed.rank() if rank is None else rank
    world = distributed.world_size() if world_size is None else world_size
    parts = world * grad_accum_steps  # micro-batch shards per optimizer step
    batch_size = min(batch_size, num_samples // parts)
    if batch_size < 1:
        raise ConfigError(f"train.batch_size: {num_samples} training samples cannot fill one step of {parts} "
                          f"micro-batches (world_size {world} x train.grad_accum_steps {grad_accum_steps})")
    step_size = batch_size * parts
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_samples, generator=generator)
    full, rest = divmod(num_samples, step_size)
    ones = torch.ones(step_size)
    steps = [(chunk, ones) for chunk in order[: full * step_size].split(step_size)]
    if rest and not drop_last:
        pad = order[: step_size - rest]
        steps.append((torch.cat([order[full * step_size:], pad]),
                      torch.cat([torch.ones(rest), torch.zeros(step_size - rest)])))
    if parts == 1:  # one process, no accumulation: denom = weight.sum()
        weight = ones.to(device)
        denom = weight.sum()
        return [Batch(ids.to(device), weight, denom) if w is ones
                else Batch(ids.to(device), w.to(device), samples=int(w.sum())) for ids, w in steps]
    micro_size = world * batch_size
    batches = []
    for ids, w in steps:
        denom = (w.sum() / parts).to(device)
        for m in range(grad_accum_steps):
            rows = slice(m * micro_size, (m + 1) * micro_size)
            batches.append(Batch(distributed.shard_rows(ids[rows], rank, world).to(device),
                                 distributed.shard_rows(w[rows], rank, world).to(device),
                                 denom, offset=rank * batch_size, global_size=micro_size,
                                 samples=int(w[rows].sum())))
    return batches


class TrainingDiverged(RuntimeError):
    """`train.max_bad_steps` optimizer steps in a row had a non-finite loss or gradient norm (exit code 3)."""


class Task(ABC):
    """What the engine needs from a model-specific trainer."""

    model: nn.Module
    metric_names: tuple[str, ...]  # order of the vector returned by forward_loss

    @abstractmethod
    def train_batches(self, epoch: int) -> list[Any]:
        """This rank's micro-batches of one epoch (static shapes), `grad_accum_steps` per optimizer
        step and the same count on every rank (see `epoch_batches`)."""

    @abstractmethod
    def forward_loss(self, batch: Any, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar loss to minimise, 1-D metric vector matching `metric_names`). Pure tensor code. `model` is
        what to call: `self.model`, or it in DDP under torchrun. Eval, logging and checkpoints use `self.model`."""

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

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer, taken: torch.Tensor) -> None:
        """After each optimizer step (`taken`: a device bool, False when the step was skipped); device work only."""

    @abstractmethod
    def end_epoch(self, epoch: int, sums: torch.Tensor, steps: torch.Tensor, lr: torch.Tensor,
                  seconds: float | Callable[[], float], perf: dict[str, Any], skipped: torch.Tensor) -> float | None:
        """Log epoch means (sums = [metrics..., group norms...] summed over the optimizer steps that were taken,
        `steps` of them (a device count), averaged over ranks), `skipped` (steps skipped for a non-finite loss or
        gradient norm), the steps' time in `seconds` and `perf` ({PerfTags name: number or writer-thread
        callable}, see perf.py); run eval when due. Called on every rank (only rank 0's writer writes).
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

    def compile_eval(self, compiler) -> None:
        """Receives the engine's compiler (`compiler(fn) -> fn`) for the task's eval functions. A compiled
        eval function's outputs are overwritten by its next call under CUDA graphs: copy out what must last."""

    def static_inputs(self) -> list[torch.Tensor]:
        """Tensors the compiled step / eval functions read as attributes (dataset, flags), fixed in place
        for the run: they get static addresses, so CUDA graphs read them where they are (no per-step copy)."""
        return []


class Engine:
    def __init__(self, task: Task, cfg: EngineConfig, device: torch.device, checkpoint_dir: str | Path):
        self.task = task
        self.cfg = cfg
        self.device = device
        self.checkpoint_dir = Path(checkpoint_dir)
        self.lr = torch.tensor(cfg.lr * task.lr_multiplier(0.0), dtype=torch.float32, device=device)
        self.optimizer = task.make_optimizer(self.lr)
        self.amp = precision.resolve_amp(cfg.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == "fp16")
        if not self.optimizer.defaults.get("fused"):  # only fused optimizers honour `found_inf` (the skip)
            raise TypeError(f"{type(task).__name__}.make_optimizer must build a fused optimizer (fused=True)")
        self.groups = task.grad_groups()
        # Non-finite steps, counted on the device: in a row so far, the longest run and the count this epoch
        self.bad_run, self.worst_run, self.skipped = (torch.zeros((), device=device) for _ in range(3))
        self.step_finite = torch.ones((), dtype=torch.bool, device=device)
        self._warned_skip = False
        self.start_epoch = 1
        self.global_step = 0
        self.best_score = -math.inf
        planned_steps = cfg.epochs * (len(task.train_batches(1)) // cfg.grad_accum_steps)
        self.compile_mode = resolve_compile_mode(cfg.compile, device, planned_steps)
        # DDP wraps the model before the forward is compiled (torch's recommended order).
        self.ddp = distributed.wrap_model(task.model, device)
        self.train_model = task.model if self.ddp is None else self.ddp  # what the step's forward calls
        # Gradients exist before any capture: a captured backward then accumulates into them in place.
        # (Every parameter gets a gradient each step anyway, so zeros change no update.)
        for p in task.model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.compile_mode != "none":
            for tensor in task.static_inputs():
                torch._dynamo.mark_static_address(tensor)
        # Forward + loss is compiled (its backward graph too, via AOTAutograd). The update is left eager:
        # it is already two fused launches (grouped grad norms, fused Adam), and torch.compile does not
        # trace into fused optimizers.
        # fullgraph: a graph break in the step is a bug to fix, not a silent slowdown. Not under DDP: dynamo
        # runs DDP's forward eagerly (a deliberate break) and compiles the wrapped module's forward with
        # its DDPOptimizer, split at the gradient buckets so all-reduce overlaps backward.
        self.step_graph = self._step_graph(wants_graph_step(cfg.graph_step, cfg.compile, device,
                                                            distributed.world_size()))
        # inside a captured step the forward makes no graphs of its own
        self._forward = self._compiled(self._forward_eager, fullgraph=self.ddp is None,
                                       cudagraphs=self.step_graph is None)
        # Eval functions use the unwrapped model: always one graph, same mode as the step.
        task.compile_eval(lambda fn: self._compiled(fn, fullgraph=True))

    def _step_graph(self, wanted: bool) -> StepGraph | None:
        if not wanted:
            return None
        if self.device.type != "cuda" or self.ddp is not None:
            where = "on a CPU" if self.device.type != "cuda" else "under DDP (not yet run on several GPUs)"
            print(f"warning: train.graph_step needs one CUDA device; {where} the step runs without it")
            return None
        return StepGraph(self._train_step, self.optimizer)

    # ------------------------------------------------------------------------------ the step
    def _compiled(self, fn, fullgraph: bool, cudagraphs: bool = True):
        if self.compile_mode == "none":
            return fn
        # torch.compile takes a mode or options, not both: the mode's own options are spelled out.
        options = torch._inductor.list_mode_options(self.compile_mode)
        if not cudagraphs:
            options = {**options, "triton.cudagraphs": False}
        if self.device.type == "cpu":
            # Random ops stay aten calls: inductor's own CPU randn is a scalar loop, one Philox draw per
            # element (2.9 ms of the cascade's 27 ms stage_32 step for the diffusion noise, against 0.5 ms
            # for aten's vectorised normal_). The draws then also equal eager's.
            options = {**options, "fallback_random": True}
        return torch.compile(fn, fullgraph=fullgraph, options=options)

    def _forward_eager(self, batch):
        with precision.autocast(self.amp, self.device):
            return self.task.forward_loss(batch, self.train_model)

    def train_step(self, *micro_batches) -> tuple[torch.Tensor, torch.Tensor]:
        """forward + loss, backward (per micro-batch: gradient accumulation), grouped grad norms
        (+ fused clip), optimizer step; no host sync. Returns (step metrics, [total, *group] norms)."""
        if self.step_graph is not None:
            return self.step_graph(*micro_batches)
        return self._train_step(*micro_batches)

    def _train_step(self, *micro_batches) -> tuple[torch.Tensor, torch.Tensor]:
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are done with
        self.optimizer.zero_grad(set_to_none=False)
        k = len(micro_batches)
        metrics = None
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        for j, batch in enumerate(micro_batches):
            with self._grad_sync(last=j == k - 1):
                loss, micro = self._forward(batch)
                if k > 1:
                    loss = loss / k
                self.scaler.scale(loss).backward()  # scale() is the identity when the scaler is disabled
            finite = finite & torch.isfinite(loss.detach())
            # a copy, not the graph's output buffer: the next micro-batch's replay overwrites that
            metrics = micro.detach().clone() if metrics is None else metrics.add_(micro.detach())
        if k > 1:
            metrics.div_(k)
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        norms = self._norms_and_clip()
        self._skip_unless(finite & torch.isfinite(norms[0]))
        self.scaler.step(self.optimizer)  # plain optimizer.step() when disabled
        self.scaler.update()
        self.task.after_optimizer_step(self.optimizer, self.step_finite)
        return metrics, norms

    def _skip_unless(self, finite: torch.Tensor) -> None:
        """Skip the coming optimizer step on the device, without a host sync, when `finite` is False: a fused
        optimizer leaves weights, moments and step counts untouched while its `found_inf` is non-zero (the
        GradScaler's mechanism; with fp16 the scaler sets it itself, from the same non-finite gradients).
        Under DDP the gradient norm is global, so every rank decides alike."""
        skip = (~finite).float()
        if not self.scaler.is_enabled():
            self.optimizer.grad_scale, self.optimizer.found_inf = None, skip
        self.step_finite.copy_(finite)  # in place: a captured step (train.graph_step) updates this very tensor
        self.bad_run.mul_(skip).add_(skip)
        torch.maximum(self.worst_run, self.bad_run, out=self.worst_run)
        self.skipped.add_(skip)

    def _grad_sync(self, last: bool):
        """DDP all-reduces gradients in the backward of the last micro-batch only."""
        if self.ddp is None or last:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def _norms_and_clip(self) -> torch.Tensor:
        """[total, *group norms] of the (unscaled) gradients; clips them in place when grad_clip is set."""
        grads = {name: [p.grad for p in params if p.grad is not None] for name, params in self.groups.items()}
        return grouped_grad_norms(grads, max_norm=self.cfg.grad_clip, device=self.device)

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
        k = self.cfg.grad_accum_steps
        steps = len(batches) // k
        sums = None
        self.skipped.zero_()
        self.worst_run.copy_(self.bad_run)
        meter = EpochMeter(self.device)
        bar = self._progress(epoch, epochs, steps)
        for i in range(steps):
            self.lr.fill_(self.cfg.lr * task.lr_multiplier((epoch - 1 + i / steps) / epochs))
            metrics, norms = self.train_step(*batches[i * k:(i + 1) * k])
            self.global_step += 1
            step_vec = torch.cat([metrics.float(), norms.float()])
            step_vec = torch.where(self.step_finite, step_vec, 0.0)  # a skipped step's metrics are not averaged
            sums = step_vec.clone() if sums is None else sums.add_(step_vec)
            task.on_step(epoch, self.global_step, metrics, norms)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(task.progress_postfix(), refresh=False)
        perf = meter.stop(steps, samples=sum(b.samples for b in batches[:steps * k]))
        if bar is not None:
            bar.close()
        distributed.all_reduce_mean_(sums)  # epoch means over all ranks' samples (norms are global already)
        lr = self.optimizer.param_groups[0]["lr"].detach().clone()  # what the last step used (a device tensor)
        taken = (steps - self.skipped).clamp(min=1)
        score = task.end_epoch(epoch, sums, taken, lr, meter.seconds, perf, self.skipped.clone())
        self._check_bad_steps(epoch)  # before saving: the last good checkpoint is kept
        improved = score is not None and score > self.best_score
        if improved:
            self.best_score = score
        self.save(task.checkpoint_names(epoch, improved, epoch == epochs), epoch)

    def _check_bad_steps(self, epoch: int) -> None:
        """One host read per epoch (outside the steps): warn once about skipped steps; stop when too many in a row."""
        skipped, worst = (int(v) for v in torch.stack([self.skipped, self.worst_run]).tolist())
        limit = self.cfg.max_bad_steps
        if worst >= limit:
            raise TrainingDiverged(f"{worst} optimizer steps in a row had a non-finite loss or gradient norm "
                                   f"(train.max_bad_steps={limit}); stopped in epoch {epoch}, the checkpoints of "
                                   f"earlier epochs in {self.checkpoint_dir} are kept")
        if skipped and not self._warned_skip and distributed.is_main():
            self._warned_skip = True
            print(f"warning: epoch {epoch}: {skipped} optimizer step(s) skipped for a non-finite loss or gradient "
                  f"norm (weights and optimizer state unchanged; counted per epoch in the skipped_steps tag)")

    def _progress(self, epoch: int, epochs: int, steps: int):
        if not self.cfg.progress or not distributed.is_main():
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
        """Rank 0 writes (all ranks hold the same weights); every rank loads on resume."""
        if not names or not distributed.is_main():
            return
        with deferred_sigint():  # Ctrl-C now stops the run after this epoch's checkpoints are all written
            state = self.state(epoch)
            for name in names:
                ckpt.save_atomic(state, self.checkpoint_dir / name)

    def resume(self, state: dict[str, Any], source: str) -> None:
        """Continue after the checkpoint's epoch, exactly where an uninterrupted run would be (`source`: what
        the error names when the checkpoint does not fit this model or lacks a part)."""
        try:
            self._load(state)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise ckpt.CheckpointError(f"cannot resume {source} (does the config still match the checkpoint?): "
                                       f"{str(exc).strip().splitlines()[0]}") from exc

    def _load(self, state: dict[str, Any]) -> None:
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
