"""Atomic checkpoint files: written to a temp file in the same folder, fsynced, then renamed.

A crash mid-write leaves at most a stray `*.tmp` (removed on the next save), never a truncated `.pt`.
Checkpoints hold only tensors and plain Python containers so they load with `weights_only=True`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hnerv_fast.atomic import save_atomic  # noqa: F401  (re-exported: the checkpoint writer)


class CheckpointError(RuntimeError):
    pass


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
