"""Video frame sources: a synthetic generator, a folder of images, a video file.

Every loader returns ONE ``uint8`` tensor of shape ``[T, 3, H, W]`` (RGB, on CPU). Convert to
``float`` in ``[0, 1]`` with ``frames.float() / 255`` where needed.

Errors in the input (missing path, empty folder, undecodable file, frames of different sizes,
unknown source) raise :class:`DataError`, a ``ValueError`` whose message names the offending path
or config key.

This module must not import ``hnerv_fast.train``, ``hnerv_fast.logging`` or ``hnerv_fast.models``.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from hnerv_fast.errors import UserError
from hnerv_fast.names import VIDEO_SOURCES

__all__ = [
    "DataError",
    "IMAGE_SUFFIXES",
    "synthetic_video",
    "load_frame_folder",
    "load_video_file",
    "load_frames",
    "resize_frames",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(UserError, ValueError):
    """Bad input data or data configuration; the message names the path or config key."""


# --------------------------------------------------------------------------------------------
# synthetic video
# --------------------------------------------------------------------------------------------
def synthetic_video(num_frames: int = 40, height: int = 64, width: int = 128, seed: int = 0) -> torch.Tensor:
    """A deterministic, smoothly moving test video as uint8 ``[num_frames, 3, height, width]``.

    Content: a slowly drifting colour gradient background, a fixed fine texture (sum of a few
    oriented sinusoids, so the frames are not trivially smooth), and five soft-edged coloured
    shapes (discs, rounded boxes, a ring) moving on smooth Lissajous-like paths. Motion per frame
    is small (about 1 % of the frame width), so neighbouring frames are similar and a held-out
    frame is close to an interpolation of its neighbours. Motion is defined per frame, so a longer
    video is a longer clip, not a faster one.

    Everything is computed with whole-tensor ops (no per-pixel Python), ~0.1 s for 40x128x256.
    """
    for key, v in (("num_frames", num_frames), ("height", height), ("width", width)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise DataError(f"synthetic_video: data.{key} must be a positive int, got {v!r}")

    g = torch.Generator().manual_seed(int(seed))

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    T, H, W = num_frames, height, width
    aspect = W / H
    t = torch.arange(T, dtype=torch.float32).view(T, 1, 1)                     # frame index
    y = ((torch.arange(H, dtype=torch.float32) + 0.5) / H).view(1, H, 1)       # [0, 1]
    x = ((torch.arange(W, dtype=torch.float32) + 0.5) / W).view(1, 1, W) * aspect  # [0, aspect]

    # --- background: per-channel drifting gradient ------------------------------------------
    # direction / phase / drift speed per channel
    ang = rand(3) * 2 * math.pi
    freq = 0.6 + 0.8 * rand(3)
    phase = rand(3) * 2 * math.pi
    drift = (0.02 + 0.03 * rand(3)) * (1 - 2 * (rand(3) > 0.5).float())  # radians per frame
    base = 0.25 + 0.5 * rand(3)
    chans = []
    for c in range(3):
        u = math.cos(ang[c]) * x + math.sin(ang[c]) * y                        # [1, H, W]
        chans.append(base[c] + 0.22 * torch.sin(2 * math.pi * freq[c] * u + phase[c] + drift[c] * t))
    img = torch.stack(chans, dim=1)                                            # [T, 3, H, W]

    # --- static texture: a few oriented sinusoids, small amplitude --------------------------
    tex = torch.zeros(1, H, W)
    for _ in range(4):
        a = float(rand(1)) * math.pi
        f = 6.0 + 10.0 * float(rand(1))
        p = float(rand(1)) * 2 * math.pi
        tex = tex + torch.sin(2 * math.pi * f * (math.cos(a) * x + math.sin(a) * y) + p)
    tex = (0.035 * tex / 2.0).unsqueeze(1)                                     # [1, 1, H, W]
    img = img + tex

    # --- moving shapes -----------------------------------------------------------------------
    n_shapes = 5
    edge = 1.5 / H  # soft edge width (about 1.5 px), keeps motion sub-pixel smooth
    for k in range(n_shapes):
        colour = (0.1 + 0.8 * rand(3)).view(1, 3, 1, 1)
        r = 0.10 + 0.12 * float(rand(1))                                       # size (frac of H)
        cx0, cy0 = 0.15 * aspect + 0.7 * aspect * float(rand(1)), 0.2 + 0.6 * float(rand(1))
        ax, ay = 0.25 * aspect * float(rand(1)), 0.25 * float(rand(1))        # path amplitudes
        wx, wy = 0.04 + 0.05 * float(rand(1)), 0.04 + 0.05 * float(rand(1))    # rad / frame
        px, py = 2 * math.pi * float(rand(1)), 2 * math.pi * float(rand(1))
        cx = cx0 + ax * torch.sin(wx * t + px)                                  # [T, 1, 1]
        cy = cy0 + ay * torch.sin(wy * t + py)
        dx, dy = x - cx, y - cy                                                # [T, H, W]
        kind = k % 3
        if kind == 0:      # disc
            sd = torch.sqrt(dx * dx + dy * dy) - r
        elif kind == 1:    # rounded box, slowly rotating
            rot = 0.03 * t + float(rand(1)) * math.pi
            c_, s_ = torch.cos(rot), torch.sin(rot)
            qx = (c_ * dx + s_ * dy).abs() - r * 1.2
            qy = (-s_ * dx + c_ * dy).abs() - r * 0.7
            outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
            sd = outside + torch.minimum(torch.maximum(qx, qy), torch.zeros(())) - 0.02
        else:              # ring
            sd = (torch.sqrt(dx * dx + dy * dy) - r).abs() - 0.3 * r
        alpha = torch.sigmoid(-sd / edge).unsqueeze(1)                         # [T, 1, H, W]
        # shading inside the shape so it is not flat
        shade = 1.0 + 0.25 * torch.tanh((dx - dy) / max(r, 1e-3)).unsqueeze(1)
        img = img * (1 - alpha) + alpha * (colour * shade)

    return (img.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()


# --------------------------------------------------------------------------------------------
# folders of images
# --------------------------------------------------------------------------------------------
def _natural_key(p: Path):
    # "frame_2.png" < "frame_10.png"; identical to plain sorting for zero-padded names.
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]


def load_frame_folder(path: str | Path, max_frames: int | None = None) -> torch.Tensor:
    """Load every ``*.png`` / ``*.jpg`` / ``*.jpeg`` file (case-insensitive) of a folder, in
    natural sort order (``2 < 10``; same as name order for zero-padded names), as RGB uint8
    ``[T, 3, H, W]``. All images must have the same size."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    folder = Path(path)
    if not folder.exists():
        raise DataError(f"frame folder not found: {str(folder)!r} (data.path)")
    if not folder.is_dir():
        raise DataError(f"frame folder is not a directory: {str(folder)!r} (data.path)")
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=_natural_key,
    )
    if not files:
        raise DataError(
            f"frame folder {str(folder)!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    if max_frames is not None:
        files = files[: _check_max_frames(max_frames)]

    frames = []
    first_size = None
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot decode image {str(f)!r}: {e}") from e
        size = arr.shape[:2]
        if first_size is None:
            first_size = size
        elif size != first_size:
            raise DataError(
                f"frames in {str(folder)!r} differ in size: {files[0].name!r} is "
                f"{first_size[0]}x{first_size[1]} (HxW) but {f.name!r} is {size[0]}x{size[1]}"
            )
        frames.append(torch.from_numpy(arr.copy()))
    return torch.stack(frames).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# video files
# --------------------------------------------------------------------------------------------
def _check_max_frames(max_frames) -> int:
    if not isinstance(max_frames, int) or isinstance(max_frames, bool) or max_frames <= 0:
        raise DataError(f"data.max_frames must be a positive int or None, got {max_frames!r}")
    return max_frames


def load_video_file(path: str | Path, max_frames: int | None = None) -> torch.Tensor:
    """Decode the first video stream of a file with PyAV as RGB uint8 ``[T, 3, H, W]``
    (at most ``max_frames`` frames)."""
    import av

    p = Path(path)
    if not p.exists():
        raise DataError(f"video file not found: {str(p)!r} (data.path)")
    if not p.is_file():
        raise DataError(f"video path is not a file: {str(p)!r} (data.path)")
    limit = None if max_frames is None else _check_max_frames(max_frames)

    frames = []
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise DataError(f"no video stream in {str(p)!r}")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                if limit is not None and len(frames) >= limit:
                    break
    except DataError:
        raise
    except Exception as e:  # av.error.* (InvalidDataError, ...) and friends
        if not frames:
            raise DataError(f"cannot decode video {str(p)!r}: {e}") from e
        # a truncated tail: keep what decoded
    if not frames:
        raise DataError(f"no decodable frames in video {str(p)!r}")
    sizes = {tuple(f.shape) for f in frames}
    if len(sizes) > 1:
        raise DataError(f"frames of video {str(p)!r} differ in size: {sorted(sizes)}")
    return torch.stack(frames).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# dispatch + resize
# --------------------------------------------------------------------------------------------
def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 ``[T, 3, H, W]`` frames to ``size = (H, W)``."""
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError) as e:
        raise DataError(f"data.resize must be (height, width), got {size!r}") from e
    if h <= 0 or w <= 0 or tuple(size) != (h, w):
        raise DataError(f"data.resize must be two positive ints (height, width), got {size!r}")
    if tuple(frames.shape[-2:]) == (h, w):
        return frames
    out = []
    for chunk in frames.split(16):  # bound the float32 working memory
        x = F.interpolate(chunk.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out).contiguous()


def load_frames(
    source: str,
    path: str | Path | None = None,
    *,
    num_frames: int = 40,
    height: int = 64,
    width: int = 128,
    seed: int = 0,
    max_frames: int | None = None,
    resize: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Load frames from ``source`` in {"synthetic", "folder", "video"} as uint8 ``[T, 3, H, W]``.

    ``num_frames/height/width/seed`` are used by "synthetic" only; ``path`` (and ``max_frames``)
    by "folder" and "video". ``resize = (H, W)`` resizes (antialiased) after loading.
    """
    if source == "synthetic":
        frames = synthetic_video(num_frames=num_frames, height=height, width=width, seed=seed)
        if max_frames is not None:
            frames = frames[: _check_max_frames(max_frames)]
    elif source in ("folder", "video"):
        if path is None or str(path) == "":
            raise DataError(f"data.path is required for data.source={source!r}")
        if source == "folder":
            frames = load_frame_folder(path, max_frames=max_frames)
        else:
            frames = load_video_file(path, max_frames=max_frames)
    else:
        raise DataError(f"unknown data.source {source!r}; expected one of {', '.join(VIDEO_SOURCES)}")
    if resize is not None:
        frames = resize_frames(frames, resize)
    return frames
