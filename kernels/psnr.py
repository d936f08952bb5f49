"""Per-sample PSNR: one pass of partial sums of squared differences, finished in torch."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _sse_partial_kernel(x_ptr, y_ptr, part_ptr, M, NB, BLOCK: tl.constexpr, ACC: tl.constexpr):
    n = tl.program_id(0)
    b = tl.program_id(1)
    base = n.to(tl.int64) * M
    acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(b * BLOCK, M, NB * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < M
        xv = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(ACC)
        yv = tl.load(y_ptr + base + offs, mask=m, other=0.0).to(ACC)
        d = xv - yv
        acc += d * d
    tl.store(part_ptr + n * NB + b, tl.sum(acc, axis=0))


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def sse_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences per sample [N] (float32, float64 for float64 input)."""
    x, y = pred.contiguous(), target.contiguous()
    n = x.shape[0]
    m = x.numel() // n
    nb = max(1, min(64, triton.cdiv(m, BLOCK * 4)))
    part = torch.empty((n, nb), dtype=acc_dtype(x.dtype), device=x.device)
    _sse_partial_kernel[(n, nb)](x, y, part, m, nb, BLOCK=BLOCK, ACC=tl_dtype(x.dtype))
    return part.sum(1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-10*log10(mean((pred-target)^2) + 1e-9) per sample [N]."""
    m = pred[0].numel()
    return -10.0 * torch.log10(sse_per_sample(pred, target) / m + 1e-9)
