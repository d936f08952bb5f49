"""DRR projection (orientation, normalisation, analytic oracle) and the physics loss."""

import math

import numpy as np
import pytest
import torch

from hnerv_fast.data.phantoms import (Ellipsoid, analytic_projection, phantom_ellipsoids,
                                      phantom_volume, phantom_xrays, voxelize)
from hnerv_fast.models.drr import drr, drr_views, physics_loss, projection_plane


def _sphere_line_integral(center, radius, value, view, size):
    """Hand-written oracle: normalised (FOV [-1, 1] -> unit length) chord of a sphere."""
    g = -1.0 + (2.0 * np.arange(size) + 1.0) / size
    rows, cols = np.meshgrid(g, g, indexing="ij")
    cd, ch, cw = center
    if view == "frontal":          # rays along d through (h=rows, w=cols)
        rho2 = (rows - ch) ** 2 + (cols - cw) ** 2
    else:                          # rays along w through (h=rows, d=cols)
        rho2 = (rows - ch) ** 2 + (cols - cd) ** 2
    chord = 2.0 * np.sqrt(np.clip(radius ** 2 - rho2, 0.0, None))
    return value * chord / 2.0


@pytest.mark.parametrize("view", ["frontal", "lateral"])
def test_drr_of_sphere_matches_analytic_line_integral(view):
    S, value, radius, center = 64, 0.7, 0.55, (0.12, -0.08, 0.2)
    vol = torch.from_numpy(voxelize([Ellipsoid(value, center, (radius,) * 3)], S))[None, None]
    got = drr(vol, view)[0, 0].double().numpy()
    oracle = _sphere_line_integral(center, radius, value, view, S)
    # Voxelisation bound: voxel centres are 2/S apart along the ray, so the number of centres
    # inside a chord of length L times 2/S is within 2/S of L; normalised by the FOV length 2
    # that is < value / S per ray (all rays are pixel-centred on voxel centres: out_size == S).
    err = np.abs(got - oracle)
    assert err.max() <= value / S + 1e-6
    assert err.mean() < 0.25 * value / S            # most rays are much better than the bound
    # the analytic projector of the phantom module agrees with the hand oracle exactly
    ana = analytic_projection([Ellipsoid(value, center, (radius,) * 3)], view, S)
    np.testing.assert_allclose(ana, oracle, atol=1e-6)


def test_analytic_projection_of_rotated_ellipsoid_matches_fine_voxelisation():
    R = phantom_ellipsoids(5)[3].rotation      # some random 3D orientation
    e = Ellipsoid(0.5, (0.1, 0.0, -0.1), (0.5, 0.2, 0.35), R)
    S = 128
    vol = torch.from_numpy(voxelize([e], S))[None, None]
    for view in ("frontal", "lateral"):
        ana = analytic_projection([e], view, S)
        got = drr(vol, view)[0, 0].numpy()
        assert np.abs(got - ana).max() <= 0.5 / S + 1e-6


def test_orientation_single_voxel_non_cubic():
    D, H, W = 8, 10, 12
    vol = torch.zeros(1, 1, D, H, W)
    vol[0, 0, 2, 5, 7] = 1.0
    fr = drr(vol, "frontal")
    la = drr(vol, "lateral")
    assert fr.shape == (1, 1, H, W) and la.shape == (1, 1, H, D)
    assert projection_plane(vol.shape, "frontal") == (H, W)
    assert projection_plane(vol.shape, "lateral") == (H, D)
    assert float(fr[0, 0, 5, 7]) == pytest.approx(1 / D) and float(fr.sum()) == pytest.approx(1 / D)
    assert float(la[0, 0, 5, 2]) == pytest.approx(1 / W) and float(la.sum()) == pytest.approx(1 / W)
    # physical units
    assert float(drr(vol, "frontal", voxel_size=0.5)[0, 0, 5, 7]) == pytest.approx(0.5)


def test_normalisation_is_resolution_independent_and_resize():
    for S in (8, 16, 32):
        vol = torch.full((2, 1, S, S, S), 0.4)
        for view in ("frontal", "lateral"):
            out = drr(vol, view, out_size=24)
            assert out.shape == (2, 1, 24, 24)
            torch.testing.assert_close(out, torch.full_like(out, 0.4))
    assert drr(torch.rand(1, 1, 4, 6, 8), "frontal", out_size=(3, 5)).shape == (1, 1, 3, 5)


def test_drr_views_and_errors():
    vol = torch.rand(2, 1, 8, 8, 8)
    xr = drr_views(vol, ("frontal", "lateral"), out_size=16)
    assert xr.shape == (2, 2, 16, 16)
    with pytest.raises(ValueError, match="unknown view"):
        drr(vol, "axial")
    with pytest.raises(ValueError):
        drr(vol[0], "frontal")
    with pytest.raises(ValueError, match="different image sizes"):
        drr_views(torch.rand(1, 1, 4, 6, 8), ("frontal", "lateral"))


def test_physics_loss_zero_for_ground_truth_with_its_own_drrs():
    vol = phantom_volume(32, seed=3)[None]                       # [1, 1, 32, 32, 32]
    views = ("frontal", "lateral")
    xr = drr_views(vol, views, out_size=32)
    assert float(physics_loss(vol, xr, views)) < 1e-12
    # analytic X-rays of the continuous phantom: only voxelisation error remains
    ana = phantom_xrays(3, views, 32)[None]
    assert float(physics_loss(vol, ana, views)) < 2e-4
    # a different phantom is clearly penalised (the test can fail)
    other = phantom_volume(32, seed=4)[None]
    assert float(physics_loss(other, xr, views)) > 20 * float(physics_loss(vol, ana, views))


def test_physics_loss_single_view_clamp_and_gradient():
    vol = phantom_volume(16, seed=1)[None]
    xr = drr_views(vol, ("lateral",), out_size=32)
    x = (vol + 0.1 * torch.randn_like(vol)).requires_grad_(True)
    loss = physics_loss(x, xr, ("lateral",))
    loss.backward()
    assert loss > 0 and x.grad is not None and x.grad.abs().sum() > 0
    # negative attenuation is clamped to zero before projection
    neg = -torch.ones(1, 1, 8, 8, 8)
    assert float(physics_loss(neg, torch.zeros(1, 1, 8, 8), ("frontal",))) == 0.0
    with pytest.raises(ValueError):
        physics_loss(vol, xr, ("frontal", "lateral"))
    with pytest.raises(ValueError):
        physics_loss(vol, xr[0], ("lateral",))
    with pytest.raises(ValueError):
        physics_loss(vol, xr, ("lateral",), at="nowhere")


def test_physics_loss_at_volume_resolution():
    vol = torch.rand(2, 1, 8, 8, 8)
    xr = drr_views(vol, ("frontal", "lateral"), out_size=8)
    F = torch.nn.functional
    big = F.interpolate(xr, size=32, mode="nearest") + 0.01 * torch.randn(2, 2, 32, 32)
    # at="volume": the X-rays are shrunk (anti-aliased bilinear) to the 8x8 DRRs
    want = F.mse_loss(xr, F.interpolate(big, size=8, mode="bilinear", align_corners=False,
                                        antialias=True))
    torch.testing.assert_close(physics_loss(vol, big, ("frontal", "lateral"), at="volume"), want)
    # at="xray": the DRRs are enlarged to 32x32
    want = F.mse_loss(F.interpolate(xr, size=32, mode="bilinear", align_corners=False), big)
    torch.testing.assert_close(physics_loss(vol, big, ("frontal", "lateral"), at="xray"), want)
    # X-rays smaller than the DRR: both modes resize the DRR
    small = drr_views(vol, ("frontal", "lateral"), out_size=4)
    torch.testing.assert_close(physics_loss(vol, small, ("frontal", "lateral"), at="volume"),
                               physics_loss(vol, small, ("frontal", "lateral"), at="xray"))
