"""Per-sample PSNR: one pass of partial sums of squared differences, then one small kernel that adds each
sample's partials and takes the log (finished in torch it was five more launches: at the training shapes the
op was host-bound, 0.10 ms against the CUDA backend's 0.03 ms on an H200)."""
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


@triton.jit
def _psnr_finalize_kernel(part_ptr, out_ptr, N, NB, M, ROWS: tl.constexpr, NB_P2: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, NB_P2)
    live = rows < N
    sse = tl.sum(tl.load(part_ptr + rows[:, None] * NB + cols[None, :],
                         mask=live[:, None] & (cols[None, :] < NB), other=0.0), axis=1)
    # -10 log10(mse + 1e-9); the backward recovers mse + 1e-9 from this output, so it matches whatever rounding
    tl.store(out_ptr + rows, tl.log(sse / M + 1e-9) * -4.342944819032518, mask=live)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-10*log10(mean((pred-target)^2) + 1e-9) per sample [N] (float32, float64 for float64 input)."""
    x, y = pred.contiguous(), target.contiguous()
    n = x.shape[0]
    m = x.numel() // n
    nb = max(1, min(64, triton.cdiv(m, BLOCK * 4)))
    part = torch.empty((n, nb), dtype=acc_dtype(x.dtype), device=x.device)
    _sse_partial_kernel[(n, nb)](x, y, part, m, nb, BLOCK=BLOCK, ACC=tl_dtype(x.dtype))
    out = torch.empty(n, dtype=part.dtype, device=x.device)
    rows = 32
    _psnr_finalize_kernel[(triton.cdiv(n, rows),)](part, out, n, nb, m, ROWS=rows, NB_P2=triton.next_power_of_2(nb))
    return out
