"""Volume PSNR and 3D SSIM of the cascade's sample-quality tags, against independent formulations."""
from __future__ import annotations

import math

import torch

from hnerv_fast.models.volume_metrics import volume_psnr, volume_ssim


def _volumes(seed=0, shape=(2, 1, 16, 18, 20)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    return x, (x + 0.05 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)


def test_psnr():
    x, y = _volumes()
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(volume_psnr(x, y).double(), -10 * torch.log10(mse), rtol=1e-5, atol=1e-4)


def test_ssim_of_identical_volumes_is_one_and_matches_a_direct_3d_window():
    x, y = _volumes()
    torch.testing.assert_close(volume_ssim(x, x), torch.ones(2), rtol=0, atol=1e-5)
    # the same index with a full (non-separable) 11^3 Gaussian window in one conv3d, float64
    c = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-c ** 2 / (2 * 1.5 ** 2))
    w = (g[:, None, None] * g[None, :, None] * g[None, None, :])
    w = (w / w.sum()).view(1, 1, 11, 11, 11)
    f = lambda v: torch.nn.functional.conv3d(v, w)  # noqa: E731
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    want = (((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(volume_ssim(x, y).double(), want, rtol=1e-4, atol=1e-5)
    assert (volume_ssim(x, y) < 1).all() and not math.isnan(float(volume_ssim(x, y)[0]))
