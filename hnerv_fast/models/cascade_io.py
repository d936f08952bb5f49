"""A trained cascade stage from one of its checkpoints: the stage's config section (``stage_config``), its name
(``stage``) and the run's data section (``config``: X-ray size and views) stored in it build the model.

Used by the trainer (generated conditioning) and the sampler CLI; reads through checkpoint_io, so
inference does not import the trainer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hnerv_fast import checkpoint_io
from hnerv_fast.checkpoint_io import CheckpointError
from hnerv_fast.config.cascade import StageConfig
from hnerv_fast.models.cascade import CascadeStage


def load_stage_model(path: str | Path, device: torch.device) -> tuple[CascadeStage, dict[str, Any]]:
    """(the stage model in eval mode on ``device``, the checkpoint dict). Raises ``CheckpointError``."""
    state = checkpoint_io.load(path, map_location=device)
    if "stage_config" not in state:
        raise CheckpointError(f"{path} is not a cascade stage checkpoint (no 'stage_config')")
    try:
        data = state["config"]["data"]
        model = CascadeStage(StageConfig(**state["stage_config"]), state["stage"], data["xray_size"], data["views"])
        model = model.to(device)
        model.load_state_dict(state["model_state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot build the stage model of {path}: {str(exc).splitlines()[0]}") from exc
    model.eval()
    return model, state
