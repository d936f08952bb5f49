"""Uniform affine weight quantisation, per tensor or per output channel.

A weight ``w`` of a channel (or of the whole tensor) with range ``[lo, hi]`` becomes the integer symbol
``q = round((w - lo) / step)`` in ``[0, 2^bits - 1]`` and is restored as ``lo + q * step``, so the
restored weight is within half a step of the original. ``lo`` and ``step`` are stored in float16 when
float16 holds them (float32 otherwise); they are rounded outward (``lo`` down, ``step`` up) before
the symbols are computed, so the stored grid still covers ``[lo, hi]`` and the half-step bound holds
for the values the decoder actually reads.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GRANULARITIES = ("channel", "tensor")
BITS_RANGE = (2, 16)


@dataclass
class QuantizedTensor:
    symbols: np.ndarray  # int32, flattened in the tensor's order, values in [0, 2^bits - 1]
    lo: np.ndarray  # [channels] float16 or float32: the value of symbol 0
    step: np.ndarray  # [channels], same dtype: the value between two symbols
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return len(self.lo)


def _round_outward(values: np.ndarray, dtype: np.dtype, direction: float) -> np.ndarray:
    """``values`` in ``dtype``, moved one ulp towards ``direction`` where the cast rounded the other way."""
    cast = values.astype(dtype)
    wrong_side = (cast.astype(np.float64) - values) * direction < 0
    return np.where(wrong_side, np.nextafter(cast, np.array(direction, dtype=dtype)), cast)


def storage_dtype(*values: np.ndarray, headroom: float = 1.0) -> np.dtype:
    """Little-endian float16 when every value, times ``headroom``, stays below float16's largest finite value;
    float32 otherwise (the grids here and the biases of hnerv_fast/inference/compressed.py)."""
    largest = max((float(np.abs(v).max()) for v in values if v.size), default=0.0)
    return np.dtype("<f2") if largest * headroom < float(np.finfo(np.float16).max) else np.dtype("<f4")


def quantize(weight: torch.Tensor, bits: int, granularity: str) -> QuantizedTensor:
    """``weight`` (any float tensor with at least one element) -> symbols and the grid that restores them.
    ``granularity="channel"`` gives every output channel (dim 0) its own ``lo`` / ``step``."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if not BITS_RANGE[0] <= bits <= BITS_RANGE[1]:
        raise ValueError(f"bits must be in {BITS_RANGE}, got {bits}")
    values = weight.detach().to("cpu", torch.float64)
    per_channel = granularity == "channel" and values.dim() > 1
    rows = (values.reshape(values.shape[0], -1) if per_channel else values.reshape(1, -1)).numpy()
    lo64, hi64 = rows.min(axis=1), rows.max(axis=1)
    dtype = storage_dtype(lo64, hi64, headroom=2.0)  # room for the step's outward rounding
    levels = (1 << bits) - 1
    lo = _round_outward(lo64, dtype, -1.0)
    # a constant channel whose value the grid dtype holds exactly has no span: any positive step gives symbol 0
    span = np.where(hi64 > lo, hi64 - lo.astype(np.float64), 1.0)
    step = _round_outward(span / levels, dtype, 1.0)  # never 0: an underflow rounds up to the smallest subnormal
    symbols = np.rint((rows - lo.astype(np.float64)[:, None]) / step.astype(np.float64)[:, None])
    symbols = np.clip(symbols, 0, levels).astype(np.int32).reshape(-1)
    return QuantizedTensor(symbols=symbols, lo=lo, step=step, shape=tuple(weight.shape))


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """float32 tensor of ``q.shape``: ``lo + symbol * step`` per channel."""
    rows = q.symbols.reshape(q.channels, -1).astype(np.float64)
    values = q.lo.astype(np.float64)[:, None] + rows * q.step.astype(np.float64)[:, None]
    return torch.from_numpy(values.astype(np.float32)).reshape(q.shape)
