"""Building blocks of a separable 11-tap Gaussian blur that streams down the rows of an image.

A stream walks its rows one at a time over a strip of columns. The horizontal pass of a row is 11
column-shifted loads of that row (the shifts hit L1: each row comes from DRAM once). The vertical
pass keeps, per blurred quantity, a "ring" of the partial sums of the 10 output rows that still
wait for input rows (ring[0] is the one closest to completion) in registers: each new horizontally
blurred row h is added to all of them with its tap weight, ring[0] is then complete and leaves, and
the rest move up one place. Every new partial sum is an FMA, so the move is a register renaming in
the loop, not a copy.

``g`` is the tuple (g[0], .., g[5]) of the symmetric window (g[k] = g[10 - k]).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def push(h, ring, g):
    """Add row h to the 10 pending output rows and open a new one: (finished row, new ring).

    Output row o = sum_k g[k] h[o + k]: the new row is tap 10 of the finished row, tap 9 of the
    next one, ..., tap 0 of the row it opens.
    """
    return ring[0] + g[0] * h, (ring[1] + g[1] * h, ring[2] + g[2] * h, ring[3] + g[3] * h,
                                ring[4] + g[4] * h, ring[5] + g[5] * h, ring[6] + g[4] * h,
                                ring[7] + g[3] * h, ring[8] + g[2] * h, ring[9] + g[1] * h, g[0] * h)


@triton.jit
def hblur5(xr, yr, cols, W, rows_ok, g, ACC: tl.constexpr):
    """Horizontal blur at output columns ``cols`` of the rows that the pointer tiles ``xr`` / ``yr``
    (at column ``cols``) point into: inputs cols .. cols+10, zero past W and where not rows_ok.

    Blurs x, d = x - y, x^2, d^2 and x*d (d rather than y: SSIM's small terms 1 - cs and 1 - l
    come out of these without cancellation). Returns (x, d at ``cols``, the 5 blurred rows).
    """
    m = rows_ok & (cols < W)
    x0 = tl.load(xr, mask=m, other=0.0).to(ACC)
    d0 = x0 - tl.load(yr, mask=m, other=0.0).to(ACC)
    wx = g[0] * x0
    wd = g[0] * d0
    hx, hd, hxx, hdd, hxd = wx, wd, wx * x0, wd * d0, wx * d0
    for k in tl.static_range(1, 11):
        m = rows_ok & (cols < W - k)
        xv = tl.load(xr + k, mask=m, other=0.0).to(ACC)
        dv = xv - tl.load(yr + k, mask=m, other=0.0).to(ACC)
        wx = g[min(k, 10 - k)] * xv
        wd = g[min(k, 10 - k)] * dv
        hx += wx
        hd += wd
        hxx += wx * xv
        hdd += wd * dv
        hxd += wx * dv
    return x0, d0, hx, hd, hxx, hdd, hxd


@triton.jit
def hblur_back(cr, ccols, Wo, ok, g, ACC: tl.constexpr):
    """Transposed horizontal blur of the rows of a [., Wo] map that the pointer tile ``cr`` points
    into, at column ``ccols`` = input column - 10: sum_k g[k] c[ccols + k] (= sum_k g[k] c[input
    column - k], the window being symmetric), the map being zero outside columns [0, Wo) and in
    rows that are not ``ok``."""
    acc = g[0] * tl.load(cr, mask=ok & (ccols >= 0) & (ccols < Wo), other=0.0).to(ACC)
    for k in tl.static_range(1, 11):
        m = ok & (ccols >= -k) & (ccols < Wo - k)
        acc += g[min(k, 10 - k)] * tl.load(cr + k, mask=m, other=0.0).to(ACC)
    return acc
