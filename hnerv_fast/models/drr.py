"""Digitally reconstructed radiographs (DRRs) and the physics loss of the X-ray -> CT cascade.

Orientation (used consistently by the model's depth lifting, the phantom generator and the loaders)
--------------------------------------------------------------------------------------------------
A volume is ``[B, C, D, H, W]`` (C = 1 for attenuation). Axis names:

* ``D`` – depth (antero-posterior), ``H`` – height (vertical, image rows), ``W`` – width (left-right).
* ``"frontal"`` (AP) view: rays run along ``D``; the image is ``[B, C, H, W]`` (rows H, cols W).
* ``"lateral"`` view: rays run along ``W``; the image is ``[B, C, H, D]`` (rows H, cols D).

So both views have the patient's vertical axis as image rows. (Summing over W gives ``[D, H]``;
it is transposed to ``[H, D]``.)

Normalisation
-------------
With ``voxel_size=None`` (default) the DRR is the line integral through a field of view of **unit
length**, i.e. the *mean* attenuation along the ray: ``sum_along_ray / N``. It is therefore O(1)
(in ``[0, 1]`` for volumes in ``[0, 1]``) and independent of the voxel resolution: the same object
sampled at 16^3 or 256^3 gives the same DRR up to voxelisation error. With a float ``voxel_size``
the DRR is the physical line integral ``sum_along_ray * voxel_size``.
The analytic phantom projector in :mod:`hnerv_fast.data.phantoms` uses the same normalisation.

Resizing to the X-ray size is bilinear (``align_corners=False``; anti-aliased when shrinking).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from hnerv_fast.names import VIEWS

__all__ = ["VIEWS", "drr", "drr_views", "projection_plane", "physics_loss"]



def _check_view(view: str) -> str:
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    return view


def projection_plane(volume_shape: Sequence[int], view: str) -> tuple[int, int]:
    """``(rows, cols)`` of the un-resized DRR of a volume whose last three dims are ``(D, H, W)``."""
    D, H, W = (int(s) for s in volume_shape[-3:])
    return (H, W) if _check_view(view) == "frontal" else (H, D)


def _resize(img: torch.Tensor, out_size) -> torch.Tensor:
    if out_size is None:
        return img
    if isinstance(out_size, int):
        out_size = (out_size, out_size)
    out_size = (int(out_size[0]), int(out_size[1]))
    if tuple(img.shape[-2:]) == out_size:
        return img
    shrinking = out_size[0] < img.shape[-2] or out_size[1] < img.shape[-1]
    return F.interpolate(img, size=out_size, mode="bilinear", align_corners=False,
                         antialias=shrinking)


def drr(volume: torch.Tensor, view: str, out_size=None,
        voxel_size: Optional[float] = None) -> torch.Tensor:
    """Parallel-beam DRR of ``volume [B, C, D, H, W]`` for ``view`` ("frontal" | "lateral").

    Returns ``[B, C, rows, cols]`` (see module doc for the orientation), resized to ``out_size``
    (``int`` or ``(rows, cols)``) if given. The volume is projected as is (no clamping): call it on
    non-negative attenuation. Differentiable.
    """
    if volume.dim() != 5:
        raise ValueError(f"drr expects a [B, C, D, H, W] volume, got shape {list(volume.shape)}")
    if _check_view(view) == "frontal":
        n = volume.shape[2]
        img = volume.sum(dim=2)                       # [B, C, H, W]
    else:
        n = volume.shape[4]
        img = volume.sum(dim=4).transpose(-1, -2)     # [B, C, D, H] -> [B, C, H, D]
    scale = (1.0 / n) if voxel_size is None else float(voxel_size)
    return _resize(img * scale, out_size)


def drr_views(volume: torch.Tensor, views: Sequence[str], out_size=None,
              voxel_size: Optional[float] = None) -> torch.Tensor:
    """Stack the DRRs of a single-channel volume ``[B, 1, D, H, W]`` for several views into the
    X-ray layout ``[B, V, rows, cols]`` (all views must share one output size)."""
    if volume.dim() != 5 or volume.shape[1] != 1:
        raise ValueError(f"drr_views expects [B, 1, D, H, W], got {list(volume.shape)}")
    imgs = [drr(volume, v, out_size, voxel_size) for v in views]
    shapes = {tuple(i.shape[-2:]) for i in imgs}
    if len(shapes) != 1:
        raise ValueError(f"views {tuple(views)} give different image sizes {sorted(shapes)}; "
                         "pass out_size")
    return torch.cat(imgs, dim=1)


def physics_loss(x0_hat: torch.Tensor, xrays: torch.Tensor, views: Sequence[str],
                 voxel_size: Optional[float] = None, at: str = "xray") -> torch.Tensor:
    """Mean over views of ``MSE(DRR(relu(x0_hat)), xray)``.

    ``x0_hat [B, 1, D, H, W]`` (predicted attenuation; negative values are clamped to 0, so the
    projection is of a physical, non-negative volume), ``xrays [B, V, X, Y]`` with
    ``len(views) == V``. Computed in float32 (autocast-safe). Returns a 0-dim tensor.

    ``at="xray"`` (the published behaviour): DRRs are resized to the X-ray size ``(X, Y)``.
    ``at="volume"``: X-rays *larger* than the DRR's native size are instead shrunk
    (anti-aliased bilinear) to it, so a coarse stage is not penalised for detail it cannot hold
    (with a 16^3 volume and 32-pixel X-rays the upsampled-DRR residual of the true volume is
    ~10% of the X-ray variance; compared natively it is ~10x lower for partial-volume phantoms).
    """
    if x0_hat.dim() != 5 or x0_hat.shape[1] != 1:
        raise ValueError(f"x0_hat must be [B, 1, D, H, W], got {list(x0_hat.shape)}")
    if xrays.dim() != 4:
        raise ValueError(f"xrays must be [B, V, H, W], got {list(xrays.shape)}")
    views = tuple(views)
    if xrays.shape[1] != len(views):
        raise ValueError(f"xrays have {xrays.shape[1]} views but views={views}")
    if xrays.shape[0] != x0_hat.shape[0]:
        raise ValueError(f"batch mismatch: x0_hat {x0_hat.shape[0]} vs xrays {xrays.shape[0]}")
    if at not in ("xray", "volume"):
        raise ValueError(f"at must be 'xray' or 'volume', got {at!r}")
    vol = x0_hat.float().clamp(min=0.0)
    target = xrays.float()
    x_size = tuple(xrays.shape[-2:])
    total = vol.new_zeros(())
    for i, view in enumerate(views):
        tgt = target[:, i:i + 1]
        if at == "xray":
            proj = drr(vol, view, x_size, voxel_size)
        else:
            native = projection_plane(vol.shape, view)
            size = (min(native[0], x_size[0]), min(native[1], x_size[1]))
            proj = drr(vol, view, size, voxel_size)
            tgt = _resize(tgt, size)
        total = total + F.mse_loss(proj, tgt)
    return total / len(views)
