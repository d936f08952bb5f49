"""pixel_loss: per-sample L1 / L2 / SSIM / MS-SSIM / Fusion1-12 losses with fused kernels.

The fast backends register two ops (ns = hnerv_fast for C++/CUDA, hnerv_fast_triton for Triton):

``ssim_fwd(x, y, mode, save_coef) -> (stats [N,C,3], coef)``
    one pass per (image, channel) plane giving mean (x-y)^2, mean |x-y| and the mean SSIM map
    (mode 1) or cs map (mode 2; mode 0 = no SSIM term). The 5 Gaussian-blurred moments are computed
    once; with ``save_coef`` the kernel also stores, per output pixel, 3 derivatives of the map value
    (C++/CUDA: w.r.t. (mu_x, E[x^2], E[xy]); Triton blurs moments of x and x - y and stores them in
    that basis, see kernels/ssim.py) — the fused-ssim approach. Only the same backend's ssim_bwd reads them.
``ssim_bwd(grad_stats, x, y, coef, mode) -> dx``
    the gradient as a transposed blur of those 3 coefficient maps (no second pass over the 5
    moments), plus the L1/L2 terms, in one kernel.

This module gives both ops fake kernels and the autograd link, and composes the loss kinds:
loss = w_L2*MSE + w_L1*MAE + w_s*(1-SSIM) + w_ms*(1-MS-SSIM) (weights: reference.FUSION_WEIGHTS).
MS-SSIM runs the fused op once per scale (cs at the first L-1 scales, SSIM at the last) with torch
2x2 average pooling between scales; see reference.ms_ssim_per_sample for the scale rule on small
images; the pooling runs in float32 at least, so low-precision inputs are not rounded between
scales. The gradient w.r.t. ``target`` is supported too (the statistics are symmetric in x and y,
so it is the same fused backward with the roles swapped, at the cost of one more forward pass).
Mixed dtypes (e.g. a bfloat16 prediction with a float32 target): see psnr.kernel_pair.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _backends, reference
from .psnr import LOW_PRECISION, kernel_pair
from .reference import PIXEL_LOSSES  # noqa: F401  (re-exported)

_MODE_NONE, _MODE_SSIM, _MODE_CS = 0, 1, 2


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _ssim_fwd_fake(x: Tensor, y: Tensor, mode: int, save_coef: bool):
    n, c, h, w = x.shape
    dt = _opmath(x.dtype)
    stats = x.new_empty((n, c, 3), dtype=dt)
    if save_coef and mode > 0:
        coef = x.new_empty((n, c, 3, h - 10, w - 10), dtype=dt)
    else:
        coef = x.new_empty((0,), dtype=dt)
    return stats, coef


def _ssim_bwd_fake(grad_stats: Tensor, x: Tensor, y: Tensor, coef: Tensor, mode: int) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _make_autograd(ns: str):
    def setup_context(ctx, inputs, output) -> None:
        x, y, mode, save_coef = inputs
        _, coef = output
        ctx.mode = mode
        ctx.has_coef = bool(save_coef) or mode == 0
        ctx.save_for_backward(x, y, coef)
        ctx.mark_non_differentiable(coef)

    def backward(ctx, grad_stats: Tensor, grad_coef: Optional[Tensor]):
        x, y, coef = ctx.saved_tensors
        ops = getattr(torch.ops, ns)
        if not ctx.has_coef:
            raise RuntimeError("ssim_fwd was called with save_coef=False; its output cannot be differentiated")
        grad_stats = grad_stats.contiguous()
        dx = dy = None
        if ctx.needs_input_grad[0]:
            dx = ops.ssim_bwd(grad_stats, x, y, coef, ctx.mode)
        if ctx.needs_input_grad[1]:
            # every statistic is symmetric in (x, y): d/dy = the x-gradient with the roles swapped.
            # The kernels take a narrow x with a wide y only, so a mixed pair is upcast first.
            dt = torch.promote_types(x.dtype, y.dtype)
            xs, ys = x.to(dt), y.to(dt)
            coef_yx = ops.ssim_fwd(ys, xs, ctx.mode, ctx.mode > 0)[1] if ctx.mode > 0 else coef
            dy = ops.ssim_bwd(grad_stats, ys, xs, coef_yx, ctx.mode).to(y.dtype)
        return dx, dy, None, None

    return setup_context, backward


def register_ssim_ops(ns: str) -> None:
    """Give a backend's ssim_fwd / ssim_bwd ops their fake kernels and autograd link."""
    torch.library.register_fake(f"{ns}::ssim_fwd", _ssim_fwd_fake)
    torch.library.register_fake(f"{ns}::ssim_bwd", _ssim_bwd_fake)
    setup_context, backward = _make_autograd(ns)
    torch.library.register_autograd(f"{ns}::ssim_fwd", backward, setup_context=setup_context)


if _backends._load_cpp():
    register_ssim_ops("hnerv_fast")


def _upcast(t: Tensor) -> Tensor:
    return t.float() if t.dtype in LOW_PRECISION else t


def _fused_pixel_loss(pred: Tensor, target: Tensor, kind: str, backend: str) -> Tensor:
    w_l2, w_l1, w_s, w_ms = reference.loss_weights(kind)
    ops = torch.ops.hnerv_fast_triton if backend == "triton" else torch.ops.hnerv_fast
    x, y = pred, target
    if backend == "cpp":
        x, y = _upcast(x), _upcast(y)  # the C++ CPU kernels take float32 / float64
    x, y = kernel_pair(x, y, mixed=backend != "cpp")
    x, y = x.contiguous(), y.contiguous()
    need_grad = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    levels = reference.ms_ssim_levels(x.shape[-2], x.shape[-1]) if w_ms else 0
    if w_s:
        mode0 = _MODE_SSIM
    elif w_ms:
        mode0 = _MODE_CS if levels > 1 else _MODE_SSIM
    else:
        mode0 = _MODE_NONE
    stats = ops.ssim_fwd(x, y, mode0, need_grad)[0]
    m = stats.mean(1)  # [N, 3]: MSE, MAE, SSIM (or cs) per sample
    loss: Optional[Tensor] = None

    def add(term: Tensor) -> None:
        nonlocal loss
        loss = term if loss is None else loss + term

    if w_l2:
        add(m[:, 0] * w_l2)
    if w_l1:
        add(m[:, 1] * w_l1)
    if w_s:
        add((1.0 - m[:, 2]) * w_s)
    if w_ms:
        weights = reference.ms_ssim_weights(levels)
        xl, yl = x, y
        prod: Optional[Tensor] = None
        for i in range(levels):
            mode = _MODE_SSIM if i == levels - 1 else _MODE_CS
            st = stats if (i == 0 and mode == mode0) else ops.ssim_fwd(xl, yl, mode, need_grad)[0]
            v = torch.relu(st[..., 2]) ** weights[i]
            prod = v if prod is None else prod * v
            if i < levels - 1:
                # pool in float32: a bf16/fp16 pooled image would be rounded at every scale
                xl, yl = reference.ms_ssim_downsample(_upcast(xl)), reference.ms_ssim_downsample(_upcast(yl))
        add((1.0 - prod.mean(1)) * w_ms)
    return loss


def pixel_loss(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """Per-sample pixel loss [N] of the given kind (one of PIXEL_LOSSES); caller takes ``.mean()``.

    pred/target: same-shaped floating [N, C, H, W] images in [0, 1] (any strides, any floating
    dtypes: a bfloat16 pred against a float32 target is computed in float32 against the unrounded
    target). SSIM-based kinds need H, W >= 11 (ValueError otherwise). Differentiable w.r.t. both
    inputs, each gradient in its input's dtype; the backward of the fused backends is fused as
    well. Result: float64 when either input is float64, float32 otherwise.
    """
    reference.loss_weights(kind)
    reference.check_pair(pred, target, "pixel_loss")
    w = reference.FUSION_WEIGHTS[kind]
    if w[2] or w[3]:
        reference.check_ssim_size(pred.shape, f"pixel_loss({kind})")
    backend = _backends.resolve(pred.device)
    if backend == "reference":
        return reference.pixel_loss(pred, target, kind)
    return _fused_pixel_loss(pred, target, kind, backend)
