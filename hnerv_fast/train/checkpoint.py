"""The trainer's checkpoint files: atomic writes, weights_only reads and the RNG state they carry.

Writes go to a temp file in the same folder, fsynced, then renamed: a crash mid-write leaves at most a
stray `*.tmp` (removed on the next save), never a truncated `.pt`.
"""
from __future__ import annotations

from typing import Any

import torch

from hnerv_fast.atomic import save_atomic  # noqa: F401  (re-exported: the checkpoint writer)
from hnerv_fast.checkpoint_io import CheckpointError, load  # noqa: F401  (re-exported: the checkpoint reader)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    # RNG states are CPU byte tensors; a checkpoint loaded with map_location=cuda holds CUDA copies
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
