"""Fused SSIM / cs + L1 + L2 statistics per (image, channel) plane, and the fused backward.

Forward: a program runs RB "streams" side by side, each a (plane, segment of SEG rows) over one
strip of BW columns. A stream sums (x-y)^2 and |x-y| over the pixels it owns (its rows x its
columns) and, for the output positions of the valid (H-10) x (W-10) region whose top-left corner it
owns, the 11x11 Gaussian-weighted moments -> SSIM (mode 1) or cs (mode 2), and optionally 3
coefficient maps. Per-stream partial sums are added per plane in torch (deterministic).
The moments are those of x and d = x - y (mu_x, mu_d, E[x^2], E[d^2], E[x d]): then 1 - cs and
1 - l, and the maps, come without the cancellation of E[x^2] - mu_x^2 against its neighbours.
The maps are c0 = d val/d mu_x, c1 = 2 d val/d E[x^2] + d val/d E[xy], c2 = d val/d E[xy] (the
raw derivatives in a basis that keeps the backward's terms small), so that per input pixel
    dx = a*(x-y) + b*sign(x-y) + s*(T0 + x*T1 - (x-y)*T2),  Tq = transposed blur of map q
(= the blur of the zero-extended map: the window is symmetric), computed with the same tiling.

The blur is separable and streams down the rows (kernels/_blur.py): per row, 11 column-shifted
loads that hit L1 for the horizontal pass, and a register ring of the 10 pending output rows per
blurred quantity for the vertical pass: no shared memory, no scratch, no barrier.
Per output pixel (fp32; an op = an FMA, mul or add; both backends add ~35 ops of SSIM algebra):

    forward             old Triton (banded matrix          new Triton (streaming)
                        products, 32x64 loaded tile)
    blur ops            5 * (64+32) * 2048/1188 = 830      8 * 11 * (SEG+10)/SEG + 5 * 11 ~ 155
    pixels loaded       2048/1188 = 1.72 per output        1 per input (+10 rows per segment,
                                                           column halo from L1/L2)
    register loads      -                                  22 L1 hits (x, y at 11 shifts)
    DRAM (fp32)         8 B * 1.72 in, 12 B coef out       8 B in, 12 B coef out
    backward
    blur ops            3 * (64+32) * 2048/1188 = 496      3 * (11 + 11) = 66
    DRAM (fp32)         (12 B coef) * 1.72 + 8 B + 4 B     12 B coef + 8 B x, y + 4 B dx

The CUDA backend (16x32 outputs from a 26x42 shared tile) does ~7*11*26/16 + 55 ~ 180 blur ops
per output pixel, about what this one does. Triton 3.6, sm_90, fp32: 96 registers (forward),
~70 (backward), no spills; float64 186 / 136.

Launch shapes (``tiling``): one lane per column and stream, strips of BW in {32, 64} columns (the
one that pads fewer columns), SEG >= 32 rows, enough segments for ~3072 programs, which fills 132
SMs: 256x3x80x160 -> 768 planes x 5 strips of 32, 1 segment = 3840 one-warp programs;
64x3x320x320 -> 192 planes x 5 strips of 64 x 4 segments of 80 rows = 3840 two-warp programs.
Inputs x and y may differ in dtype (bf16 prediction, fp32 target): each is loaded as stored and
converted; the accumulation type is that of x (float64 for float64 x, else float32).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ._blur import hblur5, hblur_back, push
from .psnr import acc_dtype, tl_dtype

WIN = 11
HALO = WIN - 1
MIN_SEG = 32           # shortest row segment (its 10 halo rows cost <= 31 % more horizontal work)
TARGET_PROGRAMS = 3072  # enough programs to fill 132 SMs a couple of times over

@triton.jit
def _ssim_val(m1, md, exx, edd, exd, MODE: tl.constexpr):
    """SSIM (MODE 1) or cs (MODE 2) from the blurred x, d = x - y, x^2, d^2, x*d, and the maps
    (d val/d mu_x, 2 d val/d E[x^2] + d val/d E[xy], d val/d E[xy]).

    1 - cs = s_dd / B2 and 1 - l = mu_d^2 / B1 are small terms computed without cancellation; so
    are d val/d mu_x and the second map, 2 L (1 - cs) with L = l / B2 (SSIM) or 1 / B2 (cs).
    """
    m2 = m1 - md
    s11 = exx - m1 * m1
    sdd = edd - md * md         # = s11 + s22 - 2 s12
    s1d = exd - m1 * md         # = s11 - s12
    iB2 = 1.0 / (2.0 * (s11 - s1d) + sdd + 0.0009)  # 1 / (s11 + s22 + C2)
    omc = sdd * iB2             # 1 - cs
    cs = 1.0 - omc
    dcs = 2.0 * (md - m1 * omc) * iB2  # d cs / d mu_x = (2 m1 cs - 2 m2) / B2
    if MODE == 1:
        iB1 = 1.0 / (m1 * m1 + m2 * m2 + 0.0001)
        lum = 1.0 - md * md * iB1
        val = lum * cs
        dl = 2.0 * (m1 * md * md * iB1 - md) * iB1  # (2 m2 - 2 m1 l) / B1
        d_mu = dl * cs + lum * dcs
        L = lum * iB2
    else:
        val = cs
        d_mu = dcs
        L = iB2
    return val, d_mu, 2.0 * L * omc, 2.0 * L


@triton.jit
def _weights(ACC: tl.constexpr):
    """(g[0], .., g[5]) of the symmetric 11-tap Gaussian window (sigma 1.5), computed in the kernel in
    the accumulation type. No window tensor: one cached lazily on the device would be created inside
    the first compiled call and land in a CUDA graph's private pool (reduce-overhead rejects that)."""
    one = tl.full([], 1.0, ACC)
    u4 = tl.exp(-one / 4.5)  # exp(-c^2 / (2 sigma^2)) for c = 1 .. 5 (exact constants: c^2 and 4.5)
    u3 = tl.exp(-4.0 * one / 4.5)
    u2 = tl.exp(-9.0 * one / 4.5)
    u1 = tl.exp(-16.0 * one / 4.5)
    u0 = tl.exp(-25.0 * one / 4.5)
    norm = one / (one + 2.0 * (u0 + u1 + u2 + u3 + u4))
    return u0 * norm, u1 * norm, u2 * norm, u3 * norm, u4 * norm, norm


@triton.jit
def _streams(n_streams, n_seg, SEG, n_strips, RB: tl.constexpr, BW: tl.constexpr):
    """This program's RB streams (plane * n_seg + segment; one row of the tile each) and BW columns."""
    q = tl.program_id(0) * RB + tl.arange(0, RB)
    live = q < n_streams
    p = (q // n_seg).to(tl.int64)
    r0 = (q % n_seg) * SEG
    cols = tl.program_id(1) * BW + tl.arange(0, BW)
    part = (q.to(tl.int64) * n_strips + tl.program_id(1)) * 3  # this stream's partial sums
    return live, p[:, None], r0[:, None], cols[None, :], part


@triton.jit
def _ssim_fwd_kernel(x_ptr, y_ptr, coef_ptr, part_ptr, n_streams, H, W, Ho, Wo, SEG, n_seg, n_strips,
                     MODE: tl.constexpr, STORE: tl.constexpr, RB: tl.constexpr, BW: tl.constexpr,
                     ACC: tl.constexpr):
    alive, p, r0, cols, part = _streams(n_streams, n_seg, SEG, n_strips, RB, BW)
    live = alive[:, None]
    x_row = x_ptr + p * H * W + r0 * W + cols  # [RB, BW] pointers into row r0 of each stream
    y_row = y_ptr + p * H * W + r0 * W + cols
    sq = tl.zeros([RB, BW], ACC)
    ab = tl.zeros([RB, BW], ACC)
    vs = tl.zeros([RB, BW], ACC)
    own_c = live & (cols < W)
    if MODE == 0:
        for i in range(0, tl.minimum(SEG, H)):
            own = own_c & (r0 + i < H)
            xv = tl.load(x_row + i * W, mask=own, other=0.0).to(ACC)
            yv = tl.load(y_row + i * W, mask=own, other=0.0).to(ACC)
            d = xv - yv
            sq += d * d
            ab += tl.abs(d)
    else:
        g = _weights(ACC)
        valid_c = live & (cols < Wo)
        plane = Ho * Wo
        c_row = coef_ptr + p * 3 * plane + (r0 - 10) * Wo + cols  # coefficient row of input row r0
        z = tl.zeros([RB, BW], ACC)
        rx, rd, rxx, rdd, rxd = (z,) * 10, (z,) * 10, (z,) * 10, (z,) * 10, (z,) * 10
        # input rows r0 .. r0+SEG+9 (< H) -> output rows r0 .. r0+SEG-1 (< Ho)
        for i in range(0, tl.minimum(SEG + 10, H)):
            in_rows = live & (r0 + i < H)
            _, d, hx, hd, hxx, hdd, hxd = hblur5(x_row + i * W, y_row + i * W, cols, W, in_rows, g, ACC)
            d = tl.where(i < SEG, d, 0.0)  # (zero outside the plane: masked loads)
            sq += d * d
            ab += tl.abs(d)
            m1, rx = push(hx, rx, g)
            md, rd = push(hd, rd, g)
            exx, rxx = push(hxx, rxx, g)
            edd, rdd = push(hdd, rdd, g)
            exd, rxd = push(hxd, rxd, g)
            # output row r0 + i - 10 is complete from i = 10 on
            valid = valid_c & (i >= 10) & (r0 + i < H)
            val, c0, c1, c2 = _ssim_val(m1, md, exx, edd, exd, MODE)
            vs += tl.where(valid, val, 0.0)
            if STORE:
                cp = c_row + i * Wo
                tl.store(cp, c0, mask=valid)
                tl.store(cp + plane, c1, mask=valid)
                tl.store(cp + 2 * plane, c2, mask=valid)
    out = part_ptr + part
    tl.store(out, tl.sum(sq, axis=1), mask=alive)
    tl.store(out + 1, tl.sum(ab, axis=1), mask=alive)
    tl.store(out + 2, tl.sum(vs, axis=1), mask=alive)


@triton.jit
def _ssim_bwd_kernel(x_ptr, y_ptr, gs_ptr, coef_ptr, dx_ptr, n_streams, H, W, Ho, Wo, SEG, n_seg,
                     n_strips, HAS_SSIM: tl.constexpr, RB: tl.constexpr, BW: tl.constexpr,
                     ACC: tl.constexpr):
    alive, p, r0, cols, _ = _streams(n_streams, n_seg, SEG, n_strips, RB, BW)
    live = alive[:, None]
    off = p * H * W + r0 * W + cols  # [RB, BW] offsets of row r0 of each stream
    own_c = live & (cols < W)
    a = tl.load(gs_ptr + p * 3, mask=live, other=0.0)  # grad_stats pre-scaled: 2/(HW), 1/(HW), 1/(Ho*Wo)
    b = tl.load(gs_ptr + p * 3 + 1, mask=live, other=0.0)
    if HAS_SSIM:
        s = tl.load(gs_ptr + p * 3 + 2, mask=live, other=0.0)
        g = _weights(ACC)
        plane = Ho * Wo
        ccols = cols - 10
        c_row = coef_ptr + p * 3 * plane + (r0 - 10) * Wo + ccols  # coefficient (r0 - 10, cols - 10)
        z = tl.zeros([RB, BW], ACC)
        q0, q1, q2 = (z,) * 10, (z,) * 10, (z,) * 10
        # coefficient rows r0-10 .. r0+SEG-1 -> input rows r0 .. r0+SEG-1 (loop rows i >= 10)
        for i in range(0, tl.minimum(SEG, H) + 10):
            cr = r0 - 10 + i
            ok = live & (cr >= 0) & (cr < Ho)
            cp = c_row + i * Wo
            t0, q0 = push(hblur_back(cp, ccols, Wo, ok, g, ACC), q0, g)
            t1, q1 = push(hblur_back(cp + plane, ccols, Wo, ok, g, ACC), q1, g)
            t2, q2 = push(hblur_back(cp + 2 * plane, ccols, Wo, ok, g, ACC), q2, g)
            own = own_c & (i >= 10) & (cr < H)
            o = off + (i - 10) * W
            xv = tl.load(x_ptr + o, mask=own, other=0.0).to(ACC)
            yv = tl.load(y_ptr + o, mask=own, other=0.0).to(ACC)
            d = xv - yv
            sign = tl.where(d > 0, 1.0, 0.0) - tl.where(d < 0, 1.0, 0.0)
            dx = a * d + b * sign + s * (t0 + xv * t1 - d * t2)
            tl.store(dx_ptr + o, dx.to(dx_ptr.dtype.element_ty), mask=own)
    else:
        for i in range(0, tl.minimum(SEG, H)):
            own = own_c & (r0 + i < H)
            o = off + i * W
            xv = tl.load(x_ptr + o, mask=own, other=0.0).to(ACC)
            yv = tl.load(y_ptr + o, mask=own, other=0.0).to(ACC)
            d = xv - yv
            sign = tl.where(d > 0, 1.0, 0.0) - tl.where(d < 0, 1.0, 0.0)
            tl.store(dx_ptr + o, (a * d + b * sign).to(dx_ptr.dtype.element_ty), mask=own)


class Tiling(NamedTuple):
    """Launch shape: programs of RB streams x BW columns, streams of SEG rows (n_seg per plane)."""
    rb: int
    bw: int
    seg: int
    n_seg: int
    n_strips: int


def tiling(h: int, w: int, planes: int, interpreted: bool) -> Tiling:
    """GPU: one warp per 32 columns of a stream, strips of BW in {32, 64} columns (fewer padded
    columns; 64 on a tie), segments of SEG >= MIN_SEG rows, enough of them to reach TARGET_PROGRAMS
    programs. The Triton interpreter (CPU) pays per operation, not per element: there a program
    takes up to 256 streams of one row and up to 128 columns (11 row steps per program)."""
    if interpreted:
        bw = min(128, max(16, triton.next_power_of_2(w)))
        return Tiling(min(256, triton.next_power_of_2(planes * h)), bw, 1, h, triton.cdiv(w, bw))
    bw = min((64, 32), key=lambda b: triton.cdiv(w, b) * b)
    n_strips = triton.cdiv(w, bw)
    want = triton.cdiv(TARGET_PROGRAMS, planes * n_strips)
    seg = triton.cdiv(h, max(1, min(want, h // MIN_SEG)))
    return Tiling(1, bw, seg, triton.cdiv(h, seg), n_strips)


def _launch(t: Tiling, planes: int):
    n_streams = planes * t.n_seg
    grid = (triton.cdiv(n_streams, t.rb), t.n_strips)
    return grid, n_streams, dict(RB=t.rb, BW=t.bw, num_warps=max(1, min(8, t.rb * t.bw // 32)))


def _check(x: torch.Tensor, y: torch.Tensor, mode: int) -> None:
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(f"ssim: expected same-shaped [N, C, H, W] inputs, got {tuple(x.shape)} and {tuple(y.shape)}")
    if mode not in (0, 1, 2):
        raise ValueError("ssim: mode must be 0 (none), 1 (ssim) or 2 (cs)")
    if mode and (x.shape[-2] < WIN or x.shape[-1] < WIN):
        raise ValueError(f"ssim: SSIM needs images of at least 11x11 pixels, got {x.shape[-2]}x{x.shape[-1]}")


def ssim_fwd(x: torch.Tensor, y: torch.Tensor, mode: int, save_coef: bool, shape: Optional[Tiling] = None):
    """(stats [N,C,3] = mean (x-y)^2, mean |x-y|, mean SSIM/cs; coef [N,C,3,H-10,W-10] or empty).

    ``shape``: launch shape (default ``tiling(...)``; tests pass others)."""
    _check(x, y, mode)
    x, y = x.contiguous(), y.contiguous()
    n, c, h, w = x.shape
    p = n * c
    acc = acc_dtype(x.dtype)
    ho, wo = (h - HALO, w - HALO) if mode else (0, 0)
    store = bool(save_coef) and mode > 0
    coef = x.new_empty((n, c, 3, ho, wo) if store else (0,), dtype=acc)
    t = shape or tiling(h, w, p, not x.is_cuda)
    part = torch.empty((p, t.n_seg * t.n_strips, 3), dtype=acc, device=x.device)
    grid, n_streams, meta = _launch(t, p)
    _ssim_fwd_kernel[grid](
        x, y, coef, part, n_streams, h, w, ho, wo, t.seg, t.n_seg, t.n_strips,
        MODE=mode, STORE=store, ACC=tl_dtype(x.dtype), **meta)
    sums = part.sum(1)
    stats = torch.empty_like(sums)
    stats[:, :2] = sums[:, :2] * (1.0 / (h * w))
    stats[:, 2] = sums[:, 2] * (1.0 / (ho * wo) if mode else 0.0)
    return stats.view(n, c, 3), coef


def ssim_bwd(grad_stats: torch.Tensor, x: torch.Tensor, y: torch.Tensor, coef: torch.Tensor, mode: int,
             shape: Optional[Tiling] = None):
    """d(sum grad_stats * stats)/dx, dtype of x (``shape`` as in ssim_fwd)."""
    _check(x, y, mode)
    x, y = x.contiguous(), y.contiguous()
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    gs = grad_stats.to(acc).contiguous()
    if gs.shape != (n, c, 3):
        raise ValueError(f"ssim_bwd: grad_stats must be [N, C, 3], got {tuple(gs.shape)}")
    ho, wo = (h - HALO, w - HALO) if mode else (0, 0)
    if mode and tuple(coef.shape) != (n, c, 3, ho, wo):
        raise ValueError(f"ssim_bwd: coef must be [N, C, 3, H-10, W-10], got {tuple(coef.shape)}")
    coef = coef.contiguous()
    scaled = torch.empty_like(gs)  # per-plane factors a, b, s of the backward formula
    scaled[..., 0] = gs[..., 0] * (2.0 / (h * w))
    scaled[..., 1] = gs[..., 1] * (1.0 / (h * w))
    scaled[..., 2] = gs[..., 2] * (1.0 / (ho * wo) if mode else 0.0)
    dx = torch.empty_like(x)
    t = shape or tiling(h, w, n * c, not x.is_cuda)
    grid, n_streams, meta = _launch(t, n * c)
    _ssim_bwd_kernel[grid](
        x, y, scaled, coef if mode else gs, dx, n_streams, h, w, ho, wo, t.seg, t.n_seg,
        t.n_strips, HAS_SSIM=mode > 0, ACC=tl_dtype(x.dtype), **meta)
    return dx
