"""Three orthogonal middle slices of cubic volumes as one labelled greyscale PNG (the sampler's ``--preview``).

Volumes are indexed ``(D, H, W)`` with the axes of :mod:`hnerv_fast.models.drr`: D antero-posterior, H vertical,
W left-right. The planes, each cut through the middle voxel ``S // 2`` of the fixed axis:

    axial     fixed H -> [D, W]  rows D, columns W
    coronal   fixed D -> [H, W]  rows H, columns W (as the frontal X-ray; the trainer's val_samples slice)
    sagittal  fixed W -> [H, D]  rows H, columns D (as the lateral X-ray)

Layout: one row per volume (label on the left), one column per plane (label on top). Values in [0, 1] map to
grey 0..255 (clipped, rounded); every voxel becomes a ``scale x scale`` block (nearest neighbour), with
``scale = ceil(MIN_TILE / S)``, so a 32^3 volume is drawn 128 px wide per slice.
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np

PLANES = ("axial", "coronal", "sagittal")
FIXED_AXIS = {"axial": "H", "coronal": "D", "sagittal": "W"}
MIN_TILE = 128  # px: the smallest slice edge drawn
LABEL_W = 72  # px: the row-label column
HEADER_H = 16  # px: the column-label strip
GAP = 4  # px between tiles
BACKGROUND, TEXT = 48, 255  # grey levels: dark enough for the slices to stand out, light enough to show gaps


def middle_slices(volume: np.ndarray) -> list[np.ndarray]:
    """``[S, S, S]`` (D, H, W) -> the axial, coronal and sagittal middle slices (see the module doc)."""
    mid = volume.shape[0] // 2
    return [volume[:, mid, :], volume[mid], volume[:, :, mid].T]


def grey_tile(plane: np.ndarray, scale: int) -> np.ndarray:
    """2-D slice in [0, 1] -> uint8, each value repeated into a ``scale x scale`` block."""
    grey = np.rint(np.clip(plane, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(np.repeat(grey, scale, axis=0), scale, axis=1)


def tile_scale(size: int) -> int:
    return max(1, math.ceil(MIN_TILE / size))


def tile_origin(row: int, col: int, size: int) -> tuple[int, int]:
    """(left, top) pixel of the slice tile of volume ``row``, plane ``col``, for volumes of edge ``size``."""
    tile = size * tile_scale(size)
    return LABEL_W + col * (tile + GAP), HEADER_H + row * (tile + GAP)


def preview_png(rows: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """PNG bytes of ``(label, volume [S, S, S])`` rows, every volume of the same edge S."""
    from PIL import Image, ImageDraw, ImageFont

    size = rows[0][1].shape[0]
    if any(vol.shape != (size,) * 3 for _, vol in rows):
        raise ValueError(f"preview volumes must all be {size}^3 cubes, got {[vol.shape for _, vol in rows]}")
    scale = tile_scale(size)
    tile = size * scale
    right, bottom = tile_origin(len(rows), len(PLANES), size)
    canvas = Image.new("L", (right - GAP, bottom - GAP), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for col, plane in enumerate(PLANES):
        left, _ = tile_origin(0, col, size)
        draw.text((left + 2, 2), f"{plane} {FIXED_AXIS[plane]}={size // 2}", fill=TEXT, font=font)
    for row, (label, volume) in enumerate(rows):
        _, top = tile_origin(row, 0, size)
        draw.text((4, top + tile // 2 - 6), label, fill=TEXT, font=font)
        for col, plane in enumerate(middle_slices(volume)):
            canvas.paste(Image.fromarray(grey_tile(plane, scale)), tile_origin(row, col, size))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
