"""Every fused-op backend against the plain-torch reference (and pytorch-msssim), forward and backward.

Backends run where they can: reference and cpp on CPU here; triton on CUDA, or on CPU when
TRITON_INTERPRET=1 (tests/test_ops_triton.py runs this file's triton cases in such a subprocess);
cuda only with a GPU (marked gpu).
"""
from __future__ import annotations

import pytest
import torch

from hnerv_fast.ops import PIXEL_LOSSES, grouped_grad_norms, patch_psnr, pixel_loss, reference
from tests.ops_backends import backend  # noqa: F401  (the parametrized fixture: every backend in turn)


def _pair(shape, dtype=torch.float32, device="cpu", seed=0, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (x + noise * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)


def _ref_loss_and_grads(fn, x, y):
    xr, yr = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    out = fn(xr, yr)
    w = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype, device=out.device)
    (out * w).sum().backward()
    return out.detach(), xr.grad, yr.grad


def _compare(fast_fn, ref_fn, x, y, rtol, atol):
    out, gx, gy = _ref_loss_and_grads(fast_fn, x, y)
    r_out, r_gx, r_gy = _ref_loss_and_grads(ref_fn, x, y)
    torch.testing.assert_close(out, r_out, rtol=rtol, atol=atol)
    scale = r_gx.abs().max().item() + 1e-30
    torch.testing.assert_close(gx / scale, r_gx / scale, rtol=rtol, atol=atol)
    torch.testing.assert_close(gy / scale, r_gy / scale, rtol=rtol, atol=atol)


def _ref_loss(kind):
    def f(x, y):
        return reference.pixel_loss(x, y, kind)
    return f


TOL = {torch.float32: (2e-5, 2e-6), torch.float64: (1e-10, 1e-12)}


# ------------------------------------------------------------------------------------------------
# PSNR
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 3, 17, 23), (1, 1, 1, 1), (1, 3, 32, 32), (2, 3, 80, 160)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_psnr_matches_reference(backend, shape, dtype):
    _, dev = backend
    x, y = _pair(shape, dtype, dev)
    rtol, atol = TOL[dtype]
    _compare(patch_psnr, reference.psnr, x, y, rtol=rtol * 10, atol=atol * 10)
    assert patch_psnr(x, y).dtype == dtype


def test_psnr_identical_and_gradcheck(backend):
    _, dev = backend
    x, y = _pair((2, 3, 5, 7), torch.float64, dev)
    torch.testing.assert_close(patch_psnr(x, x), torch.full((2,), 90.0, dtype=torch.float64, device=dev))
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    assert torch.autograd.gradcheck(patch_psnr, (xr, yr), fast_mode=backend[0] == "triton")


def _unaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t that starts one element into its storage (not 16-byte aligned)."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    flat[1:].copy_(t.flatten())
    return flat[1:].view(t.shape)


@pytest.mark.parametrize("pred_dtype", [torch.float32, torch.bfloat16])
def test_psnr_of_inputs_that_start_unaligned(backend, pred_dtype):
    """The CUDA kernel reads 16 bytes per load only where every sample starts aligned: a view one element into
    its storage (of a size that would otherwise take that path) must fall back, not misread."""
    _, dev = backend
    x, y = _pair((3, 3, 16, 32), torch.float32, dev, seed=4)
    x = x.to(pred_dtype)
    for xs, ys in ((_unaligned(x), y), (x, _unaligned(y))):
        assert xs.is_contiguous() and ys.is_contiguous()
        torch.testing.assert_close(patch_psnr(xs, ys), reference.psnr(x.float(), y), rtol=2e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# pixel losses
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", PIXEL_LOSSES)
def test_pixel_loss_matches_reference_fp32(backend, kind):
    _, dev = backend
    x, y = _pair((2, 3, 37, 45), torch.float32, dev)  # MS-SSIM: 2 scales
    _compare(lambda a, b: pixel_loss(a, b, kind), _ref_loss(kind), x, y, *TOL[torch.float32])


@pytest.mark.parametrize("kind", ["L1", "L2", "SSIM", "MS-SSIM", "Fusion3", "Fusion6", "Fusion12"])
def test_pixel_loss_matches_reference_fp64(backend, kind):
    _, dev = backend
    x, y = _pair((2, 2, 44, 29), torch.float64, dev, seed=1)
    _compare(lambda a, b: pixel_loss(a, b, kind), _ref_loss(kind), x, y, *TOL[torch.float64])


@pytest.mark.parametrize("shape", [(1, 1, 11, 11), (1, 3, 12, 40), (3, 2, 45, 23), (1, 1, 23, 96)])
@pytest.mark.parametrize("kind", ["Fusion6", "MS-SSIM"])
def test_pixel_loss_odd_shapes(backend, shape, kind):
    _, dev = backend
    x, y = _pair(shape, torch.float32, dev, seed=2, noise=0.2)
    _compare(lambda a, b: pixel_loss(a, b, kind), _ref_loss(kind), x, y, *TOL[torch.float32])


@pytest.mark.parametrize("layout", ["sliced", "transposed", "channels_last"])
def test_pixel_loss_and_psnr_non_contiguous(backend, layout):
    _, dev = backend
    x, y = _pair((2, 3, 30, 50), torch.float32, dev, seed=3)
    if layout == "sliced":
        x, y = x[:, :, :, ::2], y[:, :, :, ::2]
    elif layout == "transposed":
        x, y = x.transpose(2, 3), y.transpose(2, 3)
    else:
        x, y = x.to(memory_format=torch.channels_last), y.to(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    kind = "Fusion10" if layout == "transposed" else "Fusion2"
    _compare(lambda a, b: pixel_loss(a, b, kind), _ref_loss(kind), x, y, *TOL[torch.float32])
    _compare(patch_psnr, reference.psnr, x, y, 1e-5, 1e-5)


@pytest.mark.parametrize("kind,shape", [("SSIM", (1, 2, 13, 12)), ("Fusion6", (2, 1, 12, 14)),
                                        ("Fusion10", (1, 2, 22, 23)), ("Fusion7", (2, 2, 4, 5))])
def test_pixel_loss_gradcheck_fp64(backend, kind, shape):
    name, dev = backend
    x, y = _pair(shape, torch.float64, dev, seed=4, noise=0.3)
    x.requires_grad_()
    y.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: pixel_loss(a, b, kind), (x, y), fast_mode=name == "triton")


def test_pixel_loss_vs_pytorch_msssim(backend):
    """Independent oracle: pytorch-msssim on a 5-scale image (odd width), float64."""
    pm = pytest.importorskip("pytorch_msssim")
    _, dev = backend
    x, y = _pair((1, 3, 176, 165), torch.float64, dev, seed=5)
    ssim = pm.ssim(x, y, data_range=1.0, size_average=False)
    ms = pm.ms_ssim(x, y, data_range=1.0, size_average=False)
    l1 = (x - y).abs().mean((1, 2, 3))
    expect = {"SSIM": 1 - ssim, "MS-SSIM": 1 - ms, "Fusion6": 0.7 * l1 + 0.3 * (1 - ssim),
              "Fusion10": 0.7 * l1 + 0.3 * (1 - ms)}
    for kind, e in expect.items():
        torch.testing.assert_close(pixel_loss(x, y, kind), e, rtol=0, atol=1e-6, msg=kind)


def test_no_grad_and_eval_path(backend):
    _, dev = backend
    x, y = _pair((2, 3, 24, 24), torch.float32, dev)
    with torch.no_grad():
        a = pixel_loss(x, y, "Fusion1")
    torch.testing.assert_close(a, reference.pixel_loss(x, y, "Fusion1"), rtol=2e-5, atol=2e-6)
    assert not a.requires_grad


# ------------------------------------------------------------------------------------------------
# grouped gradient norms
# ------------------------------------------------------------------------------------------------
def _groups(dev, dtypes=(torch.float32,)):
    g = torch.Generator().manual_seed(7)
    mk = lambda *s, dt=torch.float32: torch.randn(*s, generator=g).to(device=dev, dtype=dt)  # noqa: E731
    return {
        "decoder": [mk(64, 3, 3, 3), mk(64), None, mk(300_000, dt=dtypes[-1]), mk(1)],
        "rgb_head": [mk(3, 64, 3, 3, dt=dtypes[0]), mk(3)],
        "empty": [None],
        "clip_head": [mk(512, 128), mk(7, 5).t()],  # a non-contiguous one
    }


@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.float64, torch.float32)])
def test_grouped_norms_match_reference(backend, dtypes):
    _, dev = backend
    groups = _groups(dev, dtypes)
    out = grouped_grad_norms(groups)
    ref = reference.grouped_grad_norms(groups)
    assert out.shape == (5,) and out.dtype == torch.float32 and out.device.type == dev.type
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert out[3].item() == 0.0


@pytest.mark.parametrize("max_norm", [1.0, 1e6])
def test_grouped_norms_clip(backend, max_norm):
    _, dev = backend
    groups = _groups(dev)
    ref_groups = {k: [None if t is None else t.clone() for t in v] for k, v in groups.items()}
    out = grouped_grad_norms(groups, max_norm=max_norm)
    ref = reference.grouped_grad_norms(ref_groups, max_norm=max_norm)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(sum(groups.values(), []), sum(ref_groups.values(), [])):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    after = reference.grouped_grad_norms(groups)[0].item()
    assert after == pytest.approx(min(max_norm, out[0].item()), rel=1e-4)


def test_grouped_norms_many_tensors(backend):
    _, dev = backend
    g = torch.Generator().manual_seed(8)
    groups = {f"g{i}": [torch.randn(int(s), generator=g).to(dev) for s in torch.randint(1, 5000, (40,), generator=g)]
              for i in range(6)}
    torch.testing.assert_close(grouped_grad_norms(groups), reference.grouped_grad_norms(groups), rtol=1e-5, atol=1e-5)


def _regime(name, shape, seed=9):
    """Inputs where SSIM's constants matter: dark, low-contrast and saturated images (float64)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    n = torch.randn(shape, generator=g, dtype=torch.float64)
    x = {"dark": 0.02 * u, "low_contrast": 0.5 + 0.01 * u, "saturated": (0.97 + 0.05 * u).clamp(0, 1)}[name]
    y = (x + {"dark": 0.005, "low_contrast": 0.002, "saturated": 0.02}[name] * n).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("regime", ["dark", "low_contrast", "saturated"])
@pytest.mark.parametrize("kind, shape", [("SSIM", (2, 2, 24, 31)), ("MS-SSIM", (1, 1, 170, 165))])
def test_ssim_kinds_vs_pytorch_msssim_in_hard_regimes(backend, regime, kind, shape):
    """Forward and backward against pytorch-msssim's autograd (MS-SSIM at 5 scales), float64 with an exact
    window. On mid-grey random inputs a 21 % change of C1 moves SSIM by ~1e-8; on the dark ones here by
    1.2e-4 (SSIM) and 2.6e-6 (MS-SSIM), far beyond the 1e-9 tolerance (C2 is what low contrast probes)."""
    pm = pytest.importorskip("pytorch_msssim")
    _, dev = backend
    x, y = _regime(regime, shape)
    oracle = pm.ssim if kind == "SSIM" else pm.ms_ssim
    c = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-c**2 / (2 * 1.5**2))
    win = (g / g.sum()).view(1, 1, 1, 11).repeat(shape[1], 1, 1, 1)  # pytorch-msssim's own is float32: too coarse here
    xo = x.clone().requires_grad_()
    want = 1 - oracle(xo, y, data_range=1.0, size_average=False, win=win)
    want.sum().backward()
    xf = x.to(dev).requires_grad_()
    got = pixel_loss(xf, y.to(dev), kind)
    got.sum().backward()
    torch.testing.assert_close(got.cpu(), want.detach(), rtol=0, atol=1e-9)
    scale = xo.grad.abs().max().item()
    torch.testing.assert_close(xf.grad.cpu() / scale, xo.grad / scale, rtol=0, atol=1e-8)
