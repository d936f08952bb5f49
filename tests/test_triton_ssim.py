"""The Triton SSIM / L1 / L2 kernels (kernels/ssim.py) against the plain-torch reference.

Statistics and gradients of the kernel pair, on odd sizes, many planes, every mode, with and
without coefficient maps, under the default launch shape and under forced GPU-style ones (many
strips and row segments per plane), float64 gradcheck, and a bfloat16 x with a float32 y.
On CPU the cases run in a child pytest with TRITON_INTERPRET=1 (it must be set before the kernels
are defined); with CUDA they run natively as GPU tests.
"""
from __future__ import annotations

import pytest
import torch

from hnerv_fast.ops import _backends
from tests.ops_backends import HAS_CUDA, parent_on_cpu, run_triton_interpreted

RUN_HERE = HAS_CUDA or _backends.triton_interpreted()
DEV = torch.device("cuda" if HAS_CUDA else "cpu")

kernel_case = pytest.mark.skipif(not RUN_HERE, reason="needs CUDA; on CPU it runs in the interpreted child process")
pytestmark = [pytest.mark.gpu] if HAS_CUDA else []

if RUN_HERE:
    from hnerv_fast.ops import reference
    from hnerv_triton import ssim as K


def _forced(h, w, rb, bw, seg):
    """A GPU-style launch shape on a small plane: several strips, segments and streams per program."""
    return K.Tiling(rb, bw, seg, -(-h // seg), -(-w // bw))


def _pair(shape, dtype=torch.float64, seed=0, noise=0.15):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (x + noise * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x.to(DEV, dtype), y.to(DEV, dtype)


def _ref_stats(x, y, mode):
    d = (x - y).flatten(2)
    out = [(d * d).mean(-1), d.abs().mean(-1)]
    if mode:
        s, cs = reference.ssim_maps(x, y)
        out.append((s if mode == 1 else cs).flatten(2).mean(-1))
    else:
        out.append(torch.zeros_like(out[0]))
    return torch.stack(out, -1)


def _grad_weights(x):
    n, c = x.shape[:2]
    return torch.linspace(0.5, 1.5, n * c * 3, dtype=torch.float64, device=x.device).view(n, c, 3)


def _check(x, y, mode, shape=None, rtol=1e-10, atol=1e-12):
    """Kernel statistics and dx against the reference (autograd through reference.ssim_maps)."""
    stats, coef = K.ssim_fwd(x, y, mode, True, shape)
    xr = x.detach().to(stats.dtype).requires_grad_()
    ref = _ref_stats(xr, y.to(stats.dtype), mode)
    torch.testing.assert_close(stats, ref.detach(), rtol=rtol, atol=atol)
    gs = _grad_weights(x).to(stats.dtype)
    (ref * gs).sum().backward()
    dx = K.ssim_bwd(gs, x, y, coef, mode, shape)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    scale = xr.grad.abs().max()
    torch.testing.assert_close(dx.to(stats.dtype) / scale, xr.grad / scale, rtol=rtol, atol=atol)
    return stats, coef


@kernel_case
@pytest.mark.parametrize("shape", [(1, 1, 11, 11), (2, 3, 12, 75), (1, 2, 33, 130), (2, 1, 47, 70)])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_odd_sizes_every_mode(shape, mode):
    x, y = _pair(shape, seed=sum(shape) + mode)
    _, coef = _check(x, y, mode)
    if mode:
        assert coef.shape == (shape[0], shape[1], 3, shape[2] - 10, shape[3] - 10)


@kernel_case
@pytest.mark.parametrize("rb,bw,seg", [(1, 32, 7), (2, 32, 32), (4, 16, 11), (1, 64, 40)])
@pytest.mark.parametrize("mode", [1, 2])
def test_gpu_launch_shapes(rb, bw, seg, mode):
    """Strips, row segments and streams per program as the GPU tiling makes them (edges inside planes)."""
    shape = (3, 1, 45, 83)
    x, y = _pair(shape, seed=rb + bw + seg)
    t = _forced(shape[2], shape[3], rb, bw, seg)
    stats, _ = _check(x, y, mode, t)
    torch.testing.assert_close(stats, K.ssim_fwd(x, y, mode, False)[0], rtol=1e-12, atol=1e-14)


@kernel_case
def test_gpu_tiling_covers_large_inputs():
    """The default GPU launch shapes of the benchmark sizes tile the planes exactly once."""
    for n, h, w in [(256 * 3, 80, 160), (64 * 3, 320, 320), (1, 11, 11), (5, 1000, 37)]:
        t = K.tiling(h, w, n, interpreted=False)
        assert t.n_strips * t.bw >= w > (t.n_strips - 1) * t.bw
        assert t.n_seg * t.seg >= h > (t.n_seg - 1) * t.seg
        assert t.seg >= min(h, K.MIN_SEG)


@kernel_case
def test_many_planes():
    x, y = _pair((70, 3, 14, 19), seed=7)
    _check(x, y, 1)


@kernel_case
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_save_coef_off(mode):
    x, y = _pair((2, 2, 21, 30), seed=8)
    stats, coef = K.ssim_fwd(x, y, mode, False)
    assert coef.numel() == 0
    torch.testing.assert_close(stats, K.ssim_fwd(x, y, mode, True)[0], rtol=0, atol=0)
    torch.testing.assert_close(stats, _ref_stats(x, y, mode), rtol=1e-10, atol=1e-12)


@kernel_case
def test_float32_against_float64_reference():
    x, y = _pair((2, 3, 37, 45), seed=9)
    x32, y32 = x.float(), y.float()
    stats, coef = K.ssim_fwd(x32, y32, 1, True)
    assert stats.dtype == coef.dtype == torch.float32
    torch.testing.assert_close(stats.double(), _ref_stats(x32.double(), y32.double(), 1), rtol=1e-5, atol=2e-7)
    _check(x32.double(), y32.double(), 1)  # same inputs, float64 path exact
    gs = _grad_weights(x).float()
    xr = x32.double().requires_grad_()
    (_ref_stats(xr, y32.double(), 1) * gs.double()).sum().backward()
    dx = K.ssim_bwd(gs, x32, y32, coef, 1)
    scale = xr.grad.abs().max()
    # float32 accumulation against the exact gradient: well inside the reference's own float32 error
    torch.testing.assert_close(dx.double() / scale, xr.grad / scale, rtol=0, atol=1e-6)


@kernel_case
@pytest.mark.parametrize("mode", [1, 2])
def test_bf16_x_with_fp32_y(mode):
    """Each input is loaded in its own dtype: y is not rounded to bfloat16."""
    x, y = _pair((2, 3, 24, 40), seed=10)
    xb, y32 = x.to(torch.bfloat16), y.float()
    stats, coef = K.ssim_fwd(xb, y32, mode, True)
    assert stats.dtype == torch.float32
    xr = xb.double().requires_grad_()
    ref = _ref_stats(xr, y32.double(), mode)
    torch.testing.assert_close(stats.double(), ref.detach(), rtol=1e-5, atol=2e-7)
    rounded = _ref_stats(xb.double(), y32.to(torch.bfloat16).double(), mode)
    assert (rounded - ref).abs().max() > 1e-4  # rounding y would be seen
    gs = _grad_weights(x)
    (ref * gs).sum().backward()
    dx = K.ssim_bwd(gs.float(), xb, y32, coef, mode)
    assert dx.dtype == torch.bfloat16
    scale = xr.grad.abs().max()
    torch.testing.assert_close(dx.double() / scale, xr.grad / scale, rtol=1e-2, atol=1e-2)


@kernel_case
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_gradcheck_float64(mode):
    """The registered op pair (both inputs) under autograd.gradcheck, on a tiny shape."""
    from hnerv_fast.ops import _triton_ops  # noqa: F401  (registers hnerv_fast_triton ops)

    x, y = _pair((1, 2, 13, 12), seed=11, noise=0.3)
    x.requires_grad_()
    y.requires_grad_()
    w = _grad_weights(x)

    def f(a, b):
        return (torch.ops.hnerv_fast_triton.ssim_fwd(a, b, mode, True)[0] * w).sum()

    assert torch.autograd.gradcheck(f, (x, y), fast_mode=True)


@parent_on_cpu
def test_triton_ssim_interpreted_on_cpu():
    run_triton_interpreted(__file__, "not interpreted", passed=30)
