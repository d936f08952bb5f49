"""Reading checkpoints, shared by the trainer and inference (a leaf module: imports only hnerv_fast.errors).

Checkpoints hold only tensors and plain Python containers, so they load with `weights_only=True`.
Kept below train/ so that models/ and the sampler CLI read checkpoints without importing the trainer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hnerv_fast.errors import UserError


class CheckpointError(UserError, RuntimeError):
    pass


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
