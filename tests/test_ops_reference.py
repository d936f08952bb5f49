"""The plain-torch reference ops (the definition of correct) against pytorch-msssim and the spec."""
from __future__ import annotations

import math

import pytest
import torch

from hnerv_fast.ops import reference as R

pm = pytest.importorskip("pytorch_msssim")


def _pair(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (x + 0.15 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("shape", [(2, 3, 32, 40), (1, 1, 11, 11), (3, 2, 17, 50)])
def test_ssim_matches_pytorch_msssim(shape):
    x, y = _pair(shape)
    torch.testing.assert_close(R.ssim_per_sample(x, y), pm.ssim(x, y, data_range=1.0, size_average=False),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 176, 170), (1, 2, 161, 181), (1, 1, 200, 163)])
def test_ms_ssim_matches_pytorch_msssim_on_large_images(shape):
    x, y = _pair(shape, seed=1)
    assert R.ms_ssim_levels(*shape[-2:]) == 5
    torch.testing.assert_close(R.ms_ssim_per_sample(x, y), pm.ms_ssim(x, y, data_range=1.0, size_average=False),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("hw,levels", [((11, 11), 1), ((20, 40), 1), ((21, 21), 2), ((32, 32), 2),
                                       ((41, 80), 3), ((80, 160), 3), ((81, 81), 4), ((160, 400), 4),
                                       ((161, 161), 5), ((1080, 1920), 5), ((10, 50), 0)])
def test_ms_ssim_scale_rule(hw, levels):
    assert R.ms_ssim_levels(*hw) == levels


def test_ms_ssim_small_images_renormalised_weights():
    for levels in range(1, 6):
        w = R.ms_ssim_weights(levels)
        assert len(w) == levels and math.isclose(sum(w), 1.0 if levels < 5 else sum(R.MS_SSIM_WEIGHTS))
        ratios = [a / b for a, b in zip(w, R.MS_SSIM_WEIGHTS)]
        assert max(ratios) - min(ratios) < 1e-12  # same relative weights
    # one scale: MS-SSIM = relu(SSIM)
    x, y = _pair((2, 3, 15, 19), seed=2)
    torch.testing.assert_close(R.ms_ssim_per_sample(x, y), torch.relu(R.ssim_per_sample(x, y)))
    # two scales on 32x32: cs at full size ^ w0' times SSIM at 16x16 ^ w1'
    x, y = _pair((2, 3, 32, 32), seed=3)
    w0, w1 = R.ms_ssim_weights(2)
    _, cs0 = R.ssim_per_channel(x, y)
    s1, _ = R.ssim_per_channel(torch.nn.functional.avg_pool2d(x, 2), torch.nn.functional.avg_pool2d(y, 2))
    torch.testing.assert_close(R.ms_ssim_per_sample(x, y), (cs0.relu() ** w0 * s1.relu() ** w1).mean(1))


def test_fusion_table_matches_spec():
    spec = {1: (0.3, 0, 0.7, 0), 2: (0, 0.3, 0.7, 0), 3: (0.5, 0, 0.5, 0), 4: (0, 0.5, 0.5, 0),
            5: (0.7, 0, 0.3, 0), 6: (0, 0.7, 0.3, 0), 7: (0.7, 0.3, 0, 0), 8: (0.5, 0.5, 0, 0),
            9: (0, 0.9, 0.1, 0), 10: (0, 0.7, 0, 0.3), 11: (0, 0.9, 0, 0.1), 12: (0, 0.8, 0, 0.2)}
    for i, w in spec.items():
        assert R.FUSION_WEIGHTS[f"Fusion{i}"] == pytest.approx(w)
    assert R.PIXEL_LOSSES == ("L1", "L2", "SSIM", "MS-SSIM") + tuple(f"Fusion{i}" for i in range(1, 13))


def test_plain_pixel_losses_match_spec():
    """The plain kinds are the spec's single terms: L2 = MSE, L1 = MAE, SSIM = 1-SSIM, MS-SSIM = 1-MS-SSIM."""
    assert R.FUSION_WEIGHTS["L2"] == (1.0, 0.0, 0.0, 0.0)
    assert R.FUSION_WEIGHTS["L1"] == (0.0, 1.0, 0.0, 0.0)
    assert R.FUSION_WEIGHTS["SSIM"] == (0.0, 0.0, 1.0, 0.0)
    assert R.FUSION_WEIGHTS["MS-SSIM"] == (0.0, 0.0, 0.0, 1.0)
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    y = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]]]], dtype=torch.float64)
    # by hand: MAE = (0.1 + 0.2 + 0.3 + 0.4) / 4, MSE = (0.01 + 0.04 + 0.09 + 0.16) / 4
    torch.testing.assert_close(R.pixel_loss(x, y, "L1"), torch.tensor([0.25], dtype=torch.float64))
    torch.testing.assert_close(R.pixel_loss(x, y, "L2"), torch.tensor([0.075], dtype=torch.float64))


def test_pixel_loss_reference_formulas():
    x, y = _pair((2, 3, 176, 176), seed=4)
    ssim = pm.ssim(x, y, data_range=1.0, size_average=False)
    ms = pm.ms_ssim(x, y, data_range=1.0, size_average=False)
    l1 = (x - y).abs().mean((1, 2, 3))
    l2 = ((x - y) ** 2).mean((1, 2, 3))
    parts = {"L2": l2, "L1": l1, "S": 1 - ssim, "M": 1 - ms}
    for kind, (a, b, c, d) in R.FUSION_WEIGHTS.items():
        expect = a * parts["L2"] + b * parts["L1"] + c * parts["S"] + d * parts["M"]
        torch.testing.assert_close(R.pixel_loss(x, y, kind), expect, rtol=0, atol=1e-6, msg=kind)


def test_psnr_reference():
    x = torch.zeros(3, 3, 4, 4)
    y = torch.full_like(x, 0.1)
    y[1] = 0.0
    torch.testing.assert_close(R.psnr(x, y), torch.tensor([20.0, 90.0, 20.0]), rtol=1e-5, atol=1e-4)


def test_grouped_norms_reference():
    a, b, c = torch.tensor([3.0, 4.0]), torch.tensor([[12.0]]), torch.tensor([0.0])
    out = R.grouped_grad_norms({"x": [a, None], "y": [b, c], "z": []})
    torch.testing.assert_close(out, torch.tensor([13.0, 5.0, 12.0, 0.0]))
    out = R.grouped_grad_norms({"x": [a], "y": [b]}, max_norm=6.5)
    torch.testing.assert_close(a, torch.tensor([1.5, 2.0]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, torch.tensor([13.0, 5.0, 12.0]))  # norms before clipping


def test_low_precision_inputs_computed_in_float32():
    x, y = _pair((2, 3, 24, 24), seed=5, dtype=torch.float32)
    for kind in ("Fusion1", "Fusion10"):
        out = R.pixel_loss(x.bfloat16(), y.bfloat16(), kind)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, R.pixel_loss(x.bfloat16().float(), y.bfloat16().float(), kind))
