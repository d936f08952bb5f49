"""patch_psnr: per-sample PSNR, fused (one pass, no temporaries) on the fast backends.

The fast backends register ``<ns>::psnr(Tensor pred, Tensor target) -> Tensor`` (ns = hnerv_fast
for the C++/CUDA kernels, hnerv_fast_triton for Triton); this module gives those ops a fake
(meta) kernel for torch.compile and an autograd formula:
    d psnr / d pred = -20 / ln(10) * (pred - target) / (M * (mse + 1e-9)),  mse + 1e-9 = 10^(-psnr/10)
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from . import _backends, reference

_LOG10_SCALE = -20.0 / math.log(10.0)
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def kernel_pair(pred: Tensor, target: Tensor, mixed: bool) -> Tuple[Tensor, Tensor]:
    """(pred, target) as the fused kernels take them (shared with pixel_loss).

    The kernels load each input with its own element type and compute in float32 (float64 for
    float64), as the reference does. They take equal dtypes and, where ``mixed`` (CUDA, Triton),
    a float16 / bfloat16 pred (autocast) with a float32 target, which then stays unrounded. Any
    other pair goes to the promoted dtype: the wider input is never rounded down.
    """
    if pred.dtype == target.dtype or (mixed and pred.dtype in LOW_PRECISION and target.dtype == torch.float32):
        return pred, target
    dt = torch.promote_types(pred.dtype, target.dtype)
    return pred.to(dt), target.to(dt)


def _psnr_fake(pred: Tensor, target: Tensor) -> Tensor:
    return pred.new_empty((pred.shape[0],), dtype=_opmath(pred.dtype))


def _psnr_setup_context(ctx, inputs, output) -> None:
    pred, target = inputs
    ctx.save_for_backward(pred, target, output)


def _psnr_backward(ctx, grad: Tensor):
    pred, target, out = ctx.saved_tensors
    m = pred[0].numel()
    mse_eps = torch.pow(10.0, out / -10.0)
    k = (grad * _LOG10_SCALE / (mse_eps * m)).view(-1, 1, 1, 1)
    d = (pred.to(k.dtype) - target.to(k.dtype)) * k
    gp = d.to(pred.dtype) if ctx.needs_input_grad[0] else None
    gt = (-d).to(target.dtype) if ctx.needs_input_grad[1] else None
    return gp, gt


def register_psnr_op(qualname: str) -> None:
    """Give a backend's psnr op its fake kernel and autograd formula."""
    torch.library.register_fake(qualname, _psnr_fake)
    torch.library.register_autograd(qualname, _psnr_backward, setup_context=_psnr_setup_context)


if _backends._load_cpp():
    register_psnr_op("hnerv_fast::psnr")


def patch_psnr(pred: Tensor, target: Tensor) -> Tensor:
    """PSNR per sample [N] = -10*log10(mean((pred-target)^2) + 1e-9); images in [0, 1].

    pred/target: same-shaped floating [N, C, H, W] tensors (any strides, any floating dtypes: a
    bfloat16 pred against a float32 target is computed in float32 without rounding the target).
    Differentiable; each gradient has its input's dtype. Result dtype: float64 when either input
    is float64, else float32. Raises ValueError on bad shapes.
    """
    reference.check_pair(pred, target, "patch_psnr")
    backend = _backends.resolve(pred.device)
    if backend == "reference":
        return reference.psnr(pred, target)
    x, y = kernel_pair(pred, target, mixed=backend != "cpp")
    if backend == "triton":
        return torch.ops.hnerv_fast_triton.psnr(x, y)
    return torch.ops.hnerv_fast.psnr(x, y)
