"""A trained dual-head HNeRV outside the trainer: checkpoint -> model, the coordinates of any frame time
(fractional ones too) and patch position, batched prediction, frames put together from their patches."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hnerv_fast import checkpoint_io
from hnerv_fast.checkpoint_io import CheckpointError
from hnerv_fast.config import ConfigError, DualHNeRVConfig, from_dict
from hnerv_fast.data.patches import PatchGrid, from_patches, patch_coords, split_frames
from hnerv_fast.data.video import load_frames
from hnerv_fast.errors import UserError
from hnerv_fast.inference import compressed
from hnerv_fast.models.hnerv_dual import DualHNeRV


class VideoMismatchError(UserError, ValueError):
    """The run's video no longer has the frames the checkpoint was trained on."""


@dataclass
class TrainedDual:
    """A dual-head model in eval mode with what decoding needs: the run's config, its patch grid and the geometry
    of the video it was trained on. It predicts in float32, as the trainer evaluates (outside its autocast)."""

    model: DualHNeRV
    cfg: DualHNeRVConfig
    grid: PatchGrid
    num_frames: int
    height: int
    width: int
    device: torch.device
    path: Path
    has_clip_head: bool = True  # False for a file compressed without it (its embeddings are all zero)

    @property
    def patch_hw(self) -> tuple[int, int]:
        return self.grid.patch_size(self.height, self.width)

    def coords(self, times: torch.Tensor, shift: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
        """The trainer's ``(t, cx, cy)`` of every patch of ``times`` (frame indices, fractional ones allowed), frame-
        major, with every patch centre moved by ``shift = (dy, dx)`` patch heights / widths (data/patches.py)."""
        return patch_coords(self.num_frames, self.height, self.width, self.grid, times, shift)

    @torch.no_grad()
    def predict(self, coords: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(rgb float32 ``[N, 3, ph, pw]`` clamped to [0, 1], CLIP-head embedding float32 ``[N, D]``, unit norm),
        both on the model's device, in batches."""
        rgbs, embeddings = [], []
        for start in range(0, len(coords), batch_size):
            rgb, embedding = self.model(coords[start:start + batch_size].to(self.device))
            rgbs.append(rgb.clamp(0, 1))
            embeddings.append(embedding)
        return torch.cat(rgbs), torch.cat(embeddings)

    def ground_truth(self) -> torch.Tensor:
        """uint8 ``[T, 3, H, W]``: the run's video (its `data` section), checked against the trained geometry."""
        d = self.cfg.data
        frames = load_frames(d.source, d.path, num_frames=d.num_frames, height=d.height, width=d.width, seed=d.seed,
                             max_frames=d.max_frames, resize=tuple(d.resize) if d.resize else None)
        found, trained = tuple(frames.shape[i] for i in (0, 2, 3)), (self.num_frames, self.height, self.width)
        if found != trained:
            raise VideoMismatchError(
                f"the run's video (data.source={d.source}, data.path={d.path}) now has {found[0]} frames of "
                f"{found[1]}x{found[2]}, but {self.path} was trained on {trained[0]} frames of {trained[1]}x{trained[2]}")
        return frames

    def split_labels(self) -> list[str]:
        """The split of every frame: "train", "val" or "-" (in neither, e.g. with data_split 9_10_10)."""
        d = self.cfg.data
        train, val = split_frames(self.num_frames, d.split, d.shuffle, d.seed)
        labels = ["-"] * self.num_frames
        for name, ids in (("train", train), ("val", val)):
            for f in ids.tolist():
                labels[f] = name
        return labels

    def frames(self, times: torch.Tensor, shift: tuple[float, float] = (0.0, 0.0),
               batch_size: int = 256) -> torch.Tensor:
        """float32 ``[T, 3, H, W]`` in [0, 1]: every patch of each frame time, put together."""
        rgb, _ = self.predict(self.coords(times, shift), batch_size)
        return from_patches(rgb, self.grid)


def load_trained_dual(path: str | Path, device: torch.device) -> TrainedDual:
    """A dual-head checkpoint (best.pt / latest.pt of a run) or a file written by ``python -m hnerv_fast.compress``
    (told apart by its magic header) -> TrainedDual. CheckpointError (a UserError) when the file is missing,
    unreadable, truncated or corrupt, of another task or does not fit its own config."""
    path = Path(path)
    if compressed.is_compressed(path):
        state = compressed.read_compressed(path)
    else:
        state = checkpoint_io.load(path, map_location="cpu")
    return trained_dual_from_state(state, path, device)


def trained_dual_from_state(state: dict, path: Path, device: torch.device) -> TrainedDual:
    """The model of a checkpoint-shaped dict (``config``, ``video``, ``model_state_dict``)."""
    config = state.get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a training checkpoint of hnerv_fast (no 'config')")
    if config.get("task") != "dual_hnerv":
        hint = " (use python -m hnerv_fast.sample for the cascade)" if config.get("task") == "cascade" else ""
        raise CheckpointError(f"{path} is a {config.get('task')!r} checkpoint, not a dual_hnerv one{hint}")
    if "video" not in state:
        raise CheckpointError(f"{path} has no video geometry ('video'): it was written by an older version; "
                              f"train again or resume the run once to rewrite it")
    try:
        cfg = from_dict(config)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its config does not load: {exc}") from None
    weights = state.get("model_state_dict", {})
    try:
        model = DualHNeRV(cfg.model, clip_dim=weights["clip_head.2.weight"].shape[0])
        model.load_state_dict(weights)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the weights do not fit its config: {str(exc).splitlines()[0]}") from None
    video = state["video"]
    return TrainedDual(
        model=model.to(device).eval(), cfg=cfg, grid=PatchGrid(cfg.data.patch_rows, cfg.data.patch_cols),
        num_frames=int(video["num_frames"]), height=int(video["height"]), width=int(video["width"]), device=device,
        path=path,
        has_clip_head=bool(state.get("compression", {}).get("clip_head", True)),
    )
