"""CUDA-side checks: the compiled CUDA module (always, when it was built) and GPU runs (gpu marker)."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

import hnerv_fast
from hnerv_fast import ops
from hnerv_fast.ops import grouped_grad_norms, patch_psnr, pixel_loss, reference, set_backend

from tests.ops_backends import HAS_CUDA, gpu_backend  # noqa: F401  (gpu_backend: cuda, then triton)

OPS = ("psnr", "ssim_fwd", "ssim_bwd", "grouped_norms")


def _cuda_module_files():
    return sorted(Path(hnerv_fast.__file__).parent.glob("_C_cuda*.so"))


@pytest.mark.skipif(not (HAS_CUDA or _cuda_module_files()),
                    reason="hnerv_fast._C_cuda not built (build with FORCE_CUDA=1) and no CUDA device")
def test_cuda_module_loads_and_registers_all_kernels():
    """Runs without a GPU when the module was built; with a GPU a missing module is a failure, not a skip."""
    importlib.import_module("hnerv_fast._C")
    importlib.import_module("hnerv_fast._C_cuda")
    for name in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"hnerv_fast::{name}", "CUDA"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"hnerv_fast::{name}", "CPU"), name


def _pair(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    y = (x + 0.1 * torch.randn(shape, generator=g)).clamp(0, 1)
    return x.cuda().to(dtype), y.cuda().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["Fusion6", "Fusion10", "L2"])
@pytest.mark.gpu
def test_low_precision_inputs(gpu_backend, dtype, kind):
    x, y = _pair((4, 3, 40, 72), dtype)
    xr = x.clone().requires_grad_()
    out = pixel_loss(xr, y, kind)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert xr.grad.dtype == dtype
    xf = x.float().requires_grad_()
    ref = reference.pixel_loss(xf, y.float(), kind)
    ref.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(xr.grad.float(), xf.grad, rtol=2e-2, atol=1e-3 * xf.grad.abs().max().item())
    torch.testing.assert_close(patch_psnr(x, y), reference.psnr(x.float(), y.float()), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_training_shape_matches_reference(gpu_backend):
    x, y = _pair((256, 3, 80, 160), torch.float32, seed=1)
    for kind in ("Fusion6", "Fusion12"):
        xr = x.clone().requires_grad_()
        out = pixel_loss(xr, y, kind)
        out.mean().backward()
        xf = x.clone().requires_grad_()
        ref = reference.pixel_loss(xf, y, kind)
        ref.mean().backward()
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(xr.grad, xf.grad, rtol=1e-3, atol=1e-4 * xf.grad.abs().max().item())
    torch.testing.assert_close(patch_psnr(x, y), reference.psnr(x, y), rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
def test_grouped_norms_low_precision(gpu_backend):
    g = torch.Generator().manual_seed(2)
    groups = {"a": [torch.randn(1000, 300, generator=g).cuda().half(), None],
              "b": [torch.randn(77, generator=g).cuda().bfloat16(), torch.randn(5, 5, generator=g).cuda()]}
    torch.testing.assert_close(grouped_grad_norms(groups), reference.grouped_grad_norms(groups), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_compile_inductor_on_gpu(gpu_backend):
    torch._dynamo.reset()

    def f(x, y, w):
        return pixel_loss(x, y, "Fusion10").mean(), patch_psnr(x, y), grouped_grad_norms({"w": [w]}, max_norm=1.0)

    x, y = _pair((2, 3, 32, 32), torch.float32)
    x.requires_grad_()
    w = torch.randn(64, 64, device="cuda")
    loss, p, n = torch.compile(f, fullgraph=True)(x, y, w.clone())
    loss.backward()
    loss_e, p_e, n_e = f(x.detach(), y, w.clone())
    torch.testing.assert_close(loss, loss_e)
    torch.testing.assert_close(n, n_e)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_and_triton_agree():
    avail = ops.available_backends("cuda")
    assert {"cuda", "triton"} <= set(avail), f"both GPU backends must load, have {avail}"
    x, y = _pair((8, 3, 64, 96), torch.float32, seed=3)
    outs = []
    for b in ("cuda", "triton"):
        set_backend(b)
        xr = x.clone().requires_grad_()
        out = pixel_loss(xr, y, "Fusion2")
        out.sum().backward()
        outs.append((out, xr.grad))
    set_backend("auto")
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-7)
