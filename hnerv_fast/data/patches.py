"""Patch indexing: the frame split, frames <-> patches, per-patch coordinates.

Sample order (used by every function here and by the trainer):

    sample id  s = frame * grid.count + r * grid.cols + c

where ``r`` is the patch row (top to bottom) and ``c`` the patch column (left to right). So the
8 patches of frame ``f`` are the contiguous ids ``8f .. 8f+7`` for the default 2 x 4 grid.

This module must not import ``hnerv_fast.train``, ``hnerv_fast.logging`` or ``hnerv_fast.models``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hnerv_fast.config.dual import DataSplit, parse_data_split
from hnerv_fast.data.video import DataError

__all__ = [
    "PatchGrid",
    "split_frames",
    "to_patches",
    "from_patches",
    "patch_coords",
    "sample_ids",
]


@dataclass(frozen=True)
class PatchGrid:
    """A ``rows x cols`` grid of equal patches per frame (default 2 x 4 = 8 patches)."""

    rows: int = 2
    cols: int = 4

    def __post_init__(self):
        for key in ("rows", "cols"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise DataError(f"PatchGrid.{key} must be a positive int, got {v!r}")

    @property
    def count(self) -> int:
        return self.rows * self.cols

    @property
    def key(self) -> str:
        """``grid<rows>x<cols>``: part of the CLIP target cache key (the same frames cut another way differ)."""
        return f"grid{self.rows}x{self.cols}"

    def patch_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height // rows, width // cols)``; DataError unless both divide exactly."""
        if height % self.rows or width % self.cols or height <= 0 or width <= 0:
            raise DataError(
                f"frame size {height}x{width} (HxW) is not divisible by the {self.rows}x{self.cols} "
                f"patch grid; resize the frames (data.resize) to a multiple of "
                f"({self.rows}, {self.cols})"
            )
        return height // self.rows, width // self.cols


# --------------------------------------------------------------------------------------------
# frame split
# --------------------------------------------------------------------------------------------
def split_frames(
    num_frames: int, data_split: DataSplit | str = "9_10_10", shuffle: bool = False, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split frames into ``(train_frame_ids, val_frame_ids)``, both int64 and sorted ascending.

    Rule (``data_split = "a_b_c"``): for frame POSITION ``i`` (after an optional seeded shuffle
    of the frame order), ``i % c < a`` -> train, ``i % c >= b`` -> validation, otherwise neither.
    The split is by frame; all patches of a frame go to the same side.

    Consequences worth knowing (this is exactly HNeRV's ``data_split``):
      * ``"9_10_10"``: positions 0..8 of each block of 10 train; position 9 is in NEITHER set
        (``i % 10 >= 10`` never holds), so the validation set is EMPTY.
      * ``"9_9_10"``: positions 0..8 train, position 9 validates (every 10th frame held out).
      * ``"1_1_1"``: ``i % 1 == 0 < 1`` so EVERY frame is train, and ``0 >= 1`` is false so the
        validation set is EMPTY (the trainer must handle an empty val set, e.g. evaluate on train).
      * ``a == b < c`` leaves no gap; ``a < b`` leaves positions ``a..b-1`` unused.
      * With few frames the val set can be empty (e.g. 9 frames and "9_10_10").
    """
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames <= 0:
        raise DataError(f"split_frames: num_frames must be a positive int, got {num_frames!r}")
    # the trainer passes the config's parsed `data.split`; a string is parsed by the config's one parser
    a, b, c = data_split if isinstance(data_split, DataSplit) else parse_data_split(data_split)
    if shuffle:
        g = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(num_frames, generator=g)
    else:
        order = torch.arange(num_frames)
    pos_mod = torch.arange(num_frames) % c
    train = order[pos_mod < a].sort().values
    val = order[pos_mod >= b].sort().values
    return train.to(torch.long), val.to(torch.long)


# --------------------------------------------------------------------------------------------
# frames <-> patches
# --------------------------------------------------------------------------------------------
def _check_frames(frames: torch.Tensor, what: str) -> None:
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise DataError(f"{what}: expected a [T, C, H, W] tensor, got {shape}")


def to_patches(frames: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """``[T, C, H, W] -> [T * grid.count, C, ph, pw]`` (same dtype / device), sample id
    ``frame * count + r * cols + c``. One view + permute + reshape, no Python loop."""
    _check_frames(frames, "to_patches")
    T, C, H, W = frames.shape
    ph, pw = grid.patch_size(H, W)
    x = frames.reshape(T, C, grid.rows, ph, grid.cols, pw)
    x = x.permute(0, 2, 4, 1, 3, 5)  # T, rows, cols, C, ph, pw
    return x.reshape(T * grid.count, C, ph, pw)


def from_patches(patches: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """Exact inverse of :func:`to_patches`: ``[T * count, C, ph, pw] -> [T, C, H, W]``."""
    _check_frames(patches, "from_patches")
    N, C, ph, pw = patches.shape
    if N % grid.count:
        raise DataError(f"from_patches: {N} patches is not a multiple of grid.count={grid.count}")
    T = N // grid.count
    x = patches.reshape(T, grid.rows, grid.cols, C, ph, pw)
    x = x.permute(0, 3, 1, 4, 2, 5)  # T, C, rows, ph, cols, pw
    return x.reshape(T, C, grid.rows * ph, grid.cols * pw)


def patch_coords(num_frames: int, height: int, width: int, grid: PatchGrid, times: torch.Tensor | None = None,
                 shift: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """float32 ``[T * count, 3]`` of ``(t, cx, cy)`` in the sample-id order of :func:`to_patches`.

    ``t = frame / (num_frames - 1)`` (0 for a single frame), ``cx = patch centre x / W``,
    ``cy = patch centre y / H`` (pixel-edge convention: the centre of column ``c`` is at
    ``(c + 0.5) * pw``, so ``cx = (c + 0.5) / cols``).
    ``times``: the frame indices to give, fractional ones allowed (between trained frames); default every frame.
    ``shift = (dy, dx)`` moves every patch centre by that many patch heights / widths (positions between the
    trained ones). The trainer uses the defaults.
    """
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames <= 0:
        raise DataError(f"patch_coords: num_frames must be a positive int, got {num_frames!r}")
    ph, pw = grid.patch_size(height, width)
    denom = max(num_frames - 1, 1)
    frames = torch.arange(num_frames) if times is None else torch.as_tensor(times).reshape(-1)
    n = len(frames)
    t = frames.to(torch.float64) / denom
    cy = (torch.arange(grid.rows, dtype=torch.float64) + 0.5 + shift[0]) * ph / height
    cx = (torch.arange(grid.cols, dtype=torch.float64) + 0.5 + shift[1]) * pw / width
    tt = t.view(-1, 1, 1).expand(n, grid.rows, grid.cols)
    yy = cy.view(1, -1, 1).expand(n, grid.rows, grid.cols)
    xx = cx.view(1, 1, -1).expand(n, grid.rows, grid.cols)
    return torch.stack([tt, xx, yy], dim=-1).reshape(-1, 3).to(torch.float32)


def sample_ids(frame_ids: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """All patch sample ids of ``frame_ids``, frame-major: ``[f0*n .. f0*n+n-1, f1*n ..]``."""
    frame_ids = torch.as_tensor(frame_ids)
    if frame_ids.dim() != 1 or frame_ids.dtype.is_floating_point or frame_ids.dtype == torch.bool:
        raise DataError(f"sample_ids: expected a 1-D integer tensor of frame ids, got "
                        f"{frame_ids.dtype} {tuple(frame_ids.shape)}")
    n = grid.count
    offs = torch.arange(n, dtype=torch.long, device=frame_ids.device)
    return (frame_ids.to(torch.long).view(-1, 1) * n + offs).reshape(-1)
