"""Grouped L2 norms over a table of tensor pointers (multi-tensor, one launch per dtype)."""
from __future__ import annotations

from typing import List

import torch
import triton
import triton.language as tl

CHUNK = 1 << 16
BLOCK = 1024

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float64: tl.float64}


@triton.jit
def _chunk_sumsq_kernel(addr_ptr, len_ptr, part_ptr, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    ptr = tl.load(addr_ptr + c).to(tl.pointer_type(DTYPE))
    n = tl.load(len_ptr + c)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = tl.load(ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
        acc += v * v
    tl.store(part_ptr + c, tl.sum(acc, axis=0))


def grouped_norms(tensors: List[torch.Tensor], groups: List[int], num_groups: int) -> torch.Tensor:
    """[sqrt(total), sqrt(sum sq of group g) ...] float32 on the tensors' device."""
    if len(tensors) != len(groups):
        raise ValueError(f"grouped_norms: {len(tensors)} tensors but {len(groups)} group ids")
    device = tensors[0].device
    keep = [t.contiguous() for t in tensors]
    by_dtype = {}
    for t, g in zip(keep, groups):
        if not 0 <= g < num_groups:
            raise ValueError(f"grouped_norms: group id {g} out of range [0, {num_groups})")
        if t.dtype not in _TL:
            raise ValueError(f"grouped_norms: unsupported dtype {t.dtype}")
        addrs, lens, gids = by_dtype.setdefault(t.dtype, ([], [], []))
        n, esz, base = t.numel(), t.element_size(), t.data_ptr()
        for s in range(0, n, CHUNK):
            addrs.append(base + s * esz)
            lens.append(min(CHUNK, n - s))
            gids.append(g)
    sums = torch.zeros(num_groups, dtype=torch.float32, device=device)
    for dtype, (addrs, lens, gids) in by_dtype.items():
        if not addrs:
            continue
        table = torch.tensor([addrs, lens, gids], dtype=torch.int64).to(device, non_blocking=True)
        part = torch.empty(len(addrs), dtype=torch.float32, device=device)
        _chunk_sumsq_kernel[(len(addrs),)](table[0], table[1], part, DTYPE=_TL[dtype], BLOCK=BLOCK)
        sums.index_add_(0, table[2], part)
    return torch.cat([sums.sum().reshape(1), sums]).sqrt()
