"""Grouped L2 norms over a cached device table of tensor chunks: one partials launch per dtype + one finalize.

The table (chunk addresses, lengths, output slots, group offsets) depends only on the tensors'
storage, which gradients keep across steps, so it is built once per signature and cached on the
device (see TableCache): a repeated call does no host-to-device copy and no pinned allocation,
and is safe to capture in a CUDA graph.
"""
from __future__ import annotations

import operator
from collections import OrderedDict
from typing import List, Tuple

import torch
import triton
import triton.language as tl

CHUNK = 1 << 14  # elements per program: ~1000 programs for 12M elements keep every SM busy
BLOCK = 1024
MAX_ENTRIES = 4  # uncaptured tables kept (LRU); tables a CUDA graph reads are kept for good

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float64: tl.float64}


# Offsets and counts are not specialised on (value 1, multiple of 16): a new set of tensors reuses
# the compiled kernels, so a miss during CUDA graph capture never compiles.
@triton.jit(do_not_specialize=["first", "nchunks"])
def _chunk_sumsq_kernel(table_ptr, first, nchunks, part_ptr, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    c = first + tl.program_id(0)
    ptr = tl.load(table_ptr + c).to(tl.pointer_type(DTYPE))
    n = tl.load(table_ptr + nchunks + c)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = tl.load(ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
        acc += v * v
    tl.store(part_ptr + tl.load(table_ptr + 2 * nchunks + c), tl.sum(acc, axis=0))


@triton.jit(do_not_specialize=["gstart", "G"])
def _finalize_kernel(part_ptr, table_ptr, gstart, out_ptr, G, BLOCK: tl.constexpr):
    # One program, fixed summation order: deterministic. out = [sqrt(total), sqrt(group_g) ...].
    total = tl.zeros([BLOCK], dtype=tl.float64)
    for g in range(0, G):
        lo = tl.load(table_ptr + gstart + g)
        hi = tl.load(table_ptr + gstart + g + 1)
        acc = tl.zeros([BLOCK], dtype=tl.float64)
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            acc += tl.load(part_ptr + offs, mask=offs < hi, other=0.0).to(tl.float64)
        total += acc
        tl.store(out_ptr + 1 + g, tl.sqrt(tl.sum(acc, axis=0).to(tl.float32)))
    tl.store(out_ptr, tl.sqrt(tl.sum(total, axis=0).to(tl.float32)))


class Table:
    """The chunk table of one call signature: int64 [addr | len | slot] x nchunks, then the
    group offsets [G + 1]; chunks are laid out by dtype, `segments` = (triton dtype, first, count).

    `host` (pinned on CUDA) is the source of the host-to-device copy; it lives as long as the
    entry because a graph captured on a miss replays that copy from it. `ready` is False while
    the device copy exists only inside a captured graph (a miss during capture runs nothing);
    the next eager use copies it. `captured` entries are read by a graph and never evicted.
    """

    def __init__(self, host: torch.Tensor, device: torch.device, segments: List[Tuple[object, int, int]],
                 nchunks: int, capturing: bool):
        self.host = host
        self.dev = host if device.type == "cpu" else torch.empty(host.shape, dtype=host.dtype, device=device)
        self.segments = segments
        self.nchunks = nchunks
        self.ready = False
        self.captured = False
        self.use(capturing)

    def use(self, capturing: bool) -> None:
        if not self.ready and self.dev is not self.host:
            self.dev.copy_(self.host, non_blocking=True)  # while capturing: recorded, runs on each replay
        self.ready = self.ready or not capturing
        self.captured = self.captured or capturing


class TableCache:
    """LRU of device tables keyed by the exact signature (address, numel, dtype, group of every
    tensor, num_groups, device). Only uncaptured entries count against (and are evicted past)
    `max_entries`: a graph may replay reads of a captured table at any time."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self.entries: "OrderedDict[tuple, Table]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, tensors: List[torch.Tensor], groups: List[int], num_groups: int) -> Table:
        """The table of contiguous `tensors`; they are checked on a miss only (a hit is a signature checked
        before): per-tensor Python was most of a call's host time, which bounds the op at small sizes."""
        device = tensors[0].device
        capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        key = (device, num_groups, tuple(groups), tuple(map(torch.Tensor.data_ptr, tensors)),
               tuple(map(torch.Tensor.numel, tensors)), tuple(map(_DTYPE, tensors)))
        table = self.entries.get(key)
        if table is not None:
            self.hits += 1
            self.entries.move_to_end(key)
            table.use(capturing)
            return table
        _check(tensors, groups, num_groups)
        self.misses += 1
        table = _build(tensors, groups, num_groups, device, capturing)
        self.entries[key] = table
        self._evict()
        return table

    def _evict(self) -> None:
        loose = [k for k, t in self.entries.items() if not t.captured]
        for k in loose[:max(0, len(loose) - self.max_entries)]:
            del self.entries[k]

    def info(self) -> Tuple[int, int, int, int]:
        """(hits, misses, entries, captured entries)."""
        return self.hits, self.misses, len(self.entries), sum(t.captured for t in self.entries.values())


_DTYPE = operator.attrgetter("dtype")


def _check(tensors: List[torch.Tensor], groups: List[int], num_groups: int) -> None:
    device = tensors[0].device
    for i, (t, g) in enumerate(zip(tensors, groups)):
        if not 0 <= g < num_groups:
            raise ValueError(f"grouped_norms: group id {g} out of range [0, {num_groups})")
        if t.dtype not in _TL:
            raise ValueError(f"grouped_norms: unsupported dtype {t.dtype}")
        if t.device != device:
            raise ValueError(f"grouped_norms (triton): tensor {i} is on {t.device}, expected {device}")


def _build(tensors, groups, num_groups, device, capturing) -> Table:
    # Chunks are laid out by dtype (one launch each); `slot` numbers them in group order so the
    # finalize kernel reads each group's partials as one contiguous run [gstart[g], gstart[g+1]).
    per_group = [0] * (num_groups + 1)
    chunks = {}  # dtype -> [(addr, len, group)]
    for t, g in zip(tensors, groups):
        n, esz, base = t.numel(), t.element_size(), t.data_ptr()
        rows = chunks.setdefault(t.dtype, [])
        for s in range(0, n, CHUNK):
            rows.append((base + s * esz, min(CHUNK, n - s), g))
            per_group[g + 1] += 1
    for g in range(num_groups):
        per_group[g + 1] += per_group[g]
    nxt = per_group[:-1]
    addr, length, slot = [], [], []
    for rows in chunks.values():
        for a, n, g in rows:
            addr.append(a)
            length.append(n)
            slot.append(nxt[g])
            nxt[g] += 1
    host = torch.tensor(addr + length + slot + per_group, dtype=torch.int64)
    if device.type == "cuda":
        host = host.pin_memory()
    segments, first = [], 0
    for dt, rows in chunks.items():
        if rows:  # a dtype whose tensors are all empty has no chunks and no launch
            segments.append((_TL[dt], first, len(rows)))
            first += len(rows)
    return Table(host, device, segments, len(addr), capturing)


_cache = TableCache()


def cache_info() -> Tuple[int, int, int, int]:
    """(hits, misses, entries, captured entries) of the table cache."""
    return _cache.info()


def grouped_norms(tensors: List[torch.Tensor], groups: List[int], num_groups: int) -> torch.Tensor:
    """[sqrt(total), sqrt(sum sq of group g) ...] float32 on the tensors' device."""
    if len(tensors) != len(groups):
        raise ValueError(f"grouped_norms: {len(tensors)} tensors but {len(groups)} group ids")
    if not tensors:
        raise ValueError("grouped_norms: no tensors")
    device = tensors[0].device
    keep = list(map(torch.Tensor.contiguous, tensors))
    table = _cache.get(keep, groups, num_groups)
    out = torch.empty(1 + num_groups, dtype=torch.float32, device=device)
    part = torch.empty(max(1, table.nchunks), dtype=torch.float32, device=device)
    n = table.nchunks
    for dtype, first, count in table.segments:
        _chunk_sumsq_kernel[(count,)](table.dev, first, n, part, DTYPE=dtype, BLOCK=BLOCK)
    _finalize_kernel[(1,)](part, table.dev, 3 * n, out, num_groups, BLOCK=BLOCK)
    return out
