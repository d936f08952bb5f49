"""Quality of a volume against its ground truth, on [0, 1] intensities: PSNR and 3D SSIM (plain torch, float32).

Used on the cascade's DDIM samples of validation cases. SSIM is the standard single-scale index with a
Gaussian window (σ 1.5, 11 voxels, or the largest odd size that fits the volume) applied separably along
depth, height and width, C1 = 0.01², C2 = 0.03², averaged over the valid (unpadded) positions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

C1, C2 = 0.01 ** 2, 0.03 ** 2


def volume_psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B, 1, D, H, W] pair -> PSNR per volume [B] (dB)."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse + 1e-10)


def _blur3d(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    k = taps.numel()
    for shape in ((k, 1, 1), (1, k, 1), (1, 1, k)):
        x = F.conv3d(x, taps.view(1, 1, *shape))
    return x


def volume_ssim(pred: torch.Tensor, target: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """[B, 1, D, H, W] pair -> 3D SSIM per volume [B]."""
    x, y = pred.float(), target.float()
    size = min(11, *x.shape[2:])
    size -= 1 - size % 2  # odd
    c = torch.arange(size, dtype=torch.float32, device=x.device) - size // 2
    taps = torch.exp(-c ** 2 / (2 * sigma ** 2))
    taps = taps / taps.sum()
    mx, my = _blur3d(x, taps), _blur3d(y, taps)
    sxx = _blur3d(x * x, taps) - mx * mx
    syy = _blur3d(y * y, taps) - my * my
    sxy = _blur3d(x * y, taps) - mx * my
    ssim = ((2 * mx * my + C1) * (2 * sxy + C2)) / ((mx * mx + my * my + C1) * (sxx + syy + C2))
    return ssim.flatten(1).mean(dim=1)
