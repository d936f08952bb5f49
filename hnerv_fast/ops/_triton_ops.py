"""The Triton backend as torch custom ops (namespace hnerv_fast_triton), same schemas as the C++ ops.

Imported lazily by _backends (only when the triton backend is requested or picked), because the
kernels are defined at import time and TRITON_INTERPRET must be set before that to run on CPU.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from hnerv_triton import grad_norm as _k_grad_norm
from hnerv_triton import psnr as _k_psnr
from hnerv_triton import ssim as _k_ssim

from .grad_norm import register_grouped_norms_op
from .pixel_loss import register_ssim_ops
from .psnr import register_psnr_op


@torch.library.custom_op("hnerv_fast_triton::psnr", mutates_args=())
def psnr(pred: Tensor, target: Tensor) -> Tensor:
    return _k_psnr.psnr(pred, target)


@torch.library.custom_op("hnerv_fast_triton::ssim_fwd", mutates_args=())
def ssim_fwd(x: Tensor, y: Tensor, mode: int, save_coef: bool) -> Tuple[Tensor, Tensor]:
    return _k_ssim.ssim_fwd(x, y, mode, save_coef)


@torch.library.custom_op("hnerv_fast_triton::ssim_bwd", mutates_args=())
def ssim_bwd(grad_stats: Tensor, x: Tensor, y: Tensor, coef: Tensor, mode: int) -> Tensor:
    return _k_ssim.ssim_bwd(grad_stats, x, y, coef, mode)


@torch.library.custom_op("hnerv_fast_triton::grouped_norms", mutates_args=())
def grouped_norms(tensors: List[Tensor], groups: List[int], num_groups: int) -> Tensor:
    return _k_grad_norm.grouped_norms(tensors, groups, num_groups)


register_psnr_op("hnerv_fast_triton::psnr")
register_ssim_ops("hnerv_fast_triton")
register_grouped_norms_op("hnerv_fast_triton::grouped_norms")
