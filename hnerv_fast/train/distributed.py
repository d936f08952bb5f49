"""Data-parallel plumbing for `torchrun` (DDP): process group, rank helpers, metric reduction, sharding.

Everything here is a no-op in a plain single process (no `WORLD_SIZE > 1` in the environment): no
process group is created and the helpers answer rank 0 of 1, so single-process runs are unchanged.

Under `torchrun --nproc_per_node=N -m hnerv_fast.train ...`:

* :func:`process_group` creates the group from torchrun's environment (NCCL on GPU, gloo on CPU) with
  a timeout, and always destroys it on the way out, so an exception on one rank ends the job (the
  peers' collectives fail and torchrun stops the remaining workers) instead of hanging it;
* :func:`wrap_model` puts the model in :class:`DDP` (gradients are averaged over ranks in backward);
* :func:`shard_rows` picks a rank's rows of a global batch, :func:`all_reduce_mean_` averages the
  per-epoch metric sums on device (one collective per epoch, outside the step);
* rank 0 alone writes logs, config.yaml and checkpoints (:func:`is_main`, :class:`hnerv_fast.logging.null_writer.NullWriter`).
"""
from __future__ import annotations

import contextlib
import datetime
import inspect
import os
import time
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hnerv_fast.errors import UserError


# ------------------------------------------------------------------------------------- who am I
def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def world_size() -> int:
    """Number of processes: the process group's size, else torchrun's WORLD_SIZE, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """Global rank (also known before the group exists, from torchrun's RANK)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def local_rank() -> int:
    """Rank on this node: the GPU index a rank uses."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """Rank 0: the one process that prints, logs, writes config.yaml and checkpoints."""
    return rank() == 0


def enabled() -> bool:
    """True inside a multi-process group (DDP training)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# ------------------------------------------------------------------------------- process group
@contextlib.contextmanager
def process_group(device: torch.device, timeout_s: float) -> Iterator[None]:
    """The process group for a torchrun job (no-op for a single process or an existing group).

    Backend: NCCL for CUDA devices, gloo otherwise. `timeout_s` bounds every collective: a rank that
    stops answering (crashed, stuck) fails its peers after that long at the latest. The group is
    destroyed in `finally`, so an exception on one rank also breaks its peers' pending collectives."""
    if _env_int("WORLD_SIZE", 1) <= 1 or (dist.is_available() and dist.is_initialized()):
        yield
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device  # binds the NCCL communicator to this rank's GPU
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    try:
        yield
        # Leave together: gloo aborts ("terminate called without an active exception") a rank whose peer
        # tears its connections down first. Skipped on an exception, where peers must fail, not wait.
        dist.barrier()
    finally:
        dist.destroy_process_group()


# How long ranks > 0 hold back a user-error report: rank 0 meets the same bad input and reports it, and
# torchrun (which checks its workers every 0.1 s) stops the other ranks as soon as rank 0 has exited.
USER_ERROR_GRACE_S = 5.0


@contextlib.contextmanager
def rank0_reports(errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Around code whose `errors` are reported as one line: on ranks > 0 such an error waits
    USER_ERROR_GRACE_S before propagating (once, and inside the process group, whose peers keep waiting
    meanwhile), so a job-wide error is shown once, by rank 0, and an error of one rank only still is
    shown after that pause, by that rank."""
    try:
        yield
    except errors as exc:
        if _env_int("WORLD_SIZE", 1) > 1 and not is_main() and not getattr(exc, "_rank_grace_done", False):
            exc._rank_grace_done = True
            time.sleep(USER_ERROR_GRACE_S)
        raise


def cuda_device_for_rank(name: str) -> torch.device:
    """`auto`/`cuda` under torchrun: this rank's GPU (cuda:LOCAL_RANK)."""
    index = local_rank()
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK {index} but only {torch.cuda.device_count()} CUDA device(s) visible "
                           f"(--nproc_per_node must not exceed the GPUs per node)")
    return torch.device("cuda", index)


# ----------------------------------------------------------------------------------- the model
class DDP(DistributedDataParallel):
    """DistributedDataParallel that also answers the wrapped model's own attributes (e.g. a stage's
    `config`), so task code can use the wrapper wherever it used the model."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_model(model: nn.Module, device: torch.device) -> DDP | None:
    """The model in DDP when training with several processes, else None.

    No per-forward buffer sync: the models' buffers are constants (positional-encoding frequencies), so the
    per-forward buffer broadcast would be a collective for nothing. All parameters get a gradient in
    every step (a zero one for the CLIP head during its warmup), so find_unused_parameters stays off."""
    if not enabled():
        return None
    device_ids = [device.index] if device.type == "cuda" else None
    # newer torch names the switch forward_sync_buffers (broadcast_buffers is deprecated there)
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    return DDP(model, device_ids=device_ids, **{"forward_sync_buffers" if newer else "broadcast_buffers": False})


# ----------------------------------------------------------------------------- data and metrics
def shard_rows(rows: torch.Tensor, rank_: int, world: int) -> torch.Tensor:
    """Rank `rank_`'s contiguous slice of a global batch (its size must be a multiple of `world`)."""
    per = rows.shape[0] // world
    return rows[rank_ * per:(rank_ + 1) * per]


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (on device; SUM then divide, as gloo has no AVG). Identity in one process."""
    if enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every rank (e.g. a run name made from the clock)."""
    if not enabled():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_on_main(check: Callable[[], None]) -> None:
    """Run `check` (which raises a UserError on bad input) on rank 0 alone, e.g. a look at the folders rank 0
    writes; every rank raises that error, so all fail together instead of waiting in a collective."""
    error = None
    if is_main():
        try:
            check()
        except UserError as exc:
            error = exc
    error = broadcast_object(error)
    if error is not None:
        raise error
