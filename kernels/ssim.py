"""Fused SSIM / cs + L1 + L2 statistics per (image, channel) plane, and the fused backward.

Forward: one program per 22 x 54 tile of a plane's pixels (it loads 32 x 64 with the halo). It sums (x-y)^2 and |x-y| over its own
pixels and, for the output positions of the valid (H-10) x (W-10) region inside the tile, the 11x11
Gaussian-weighted moments (mu_x, mu_y, E[x^2], E[y^2], E[xy]) -> SSIM (mode 1) or cs (mode 2), and
optionally the 3 coefficient maps d val / d(mu_x, E[x^2], E[xy]). Per-tile partial sums are added
per plane in torch (deterministic).
Backward: dx = a*(x-y) + b*sign(x-y) + s*(T0 + 2x*T1 + y*T2), Tq = transposed blur of coefficient
map q (the window is symmetric, so it is the blur of the zero-extended map).
The separable blur of a loaded [32, 64] tile is two small matrix products with banded Gaussian
matrices (Gv @ T @ Gh, fp32 "ieee" precision), which keeps every tile in registers and the
program short (also under TRITON_INTERPRET); the CUDA backend is the shared-memory variant.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import triton
import triton.language as tl

from .psnr import acc_dtype, tl_dtype

WIN = 11
HALO = WIN - 1
R = 32   # tile rows loaded (R - 10 = 22 output rows per tile)
CI = 64  # tile cols loaded (CI - 10 = 54 output cols per tile)
C1 = 0.01**2
C2 = 0.03**2

_windows: Dict[Tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    key = (device, dtype)
    w = _windows.get(key)
    if w is None:
        c = torch.arange(WIN, dtype=torch.float64) - WIN // 2
        g = torch.exp(-(c**2) / (2 * 1.5**2))
        w = (g / g.sum()).to(device=device, dtype=dtype)
        _windows[key] = w
    return w


@triton.jit
def _band(win_ptr, N: tl.constexpr, ROW_MINUS_COL: tl.constexpr, ACC: tl.constexpr):
    """[N, N] banded matrix B with B[a, b] = g[a - b] (or g[b - a]) inside the 11-tap band, else 0."""
    a = tl.arange(0, N)[:, None]
    b = tl.arange(0, N)[None, :]
    if ROW_MINUS_COL:
        k = a - b
    else:
        k = b - a
    return tl.load(win_ptr + k, mask=(k >= 0) & (k < 11), other=0.0).to(ACC)


@triton.jit
def _blur(t, gv, gh):
    """Valid separable blur of an [R, CI] tile: rows i < R-10, cols j < CI-10 of the result are exact."""
    return tl.dot(gv, tl.dot(t, gh, input_precision="ieee"), input_precision="ieee")


@triton.jit
def _ssim_fwd_kernel(x_ptr, y_ptr, win_ptr, coef_ptr, part_ptr, H, W, Ho, Wo, n_tw, n_tiles,
                     MODE: tl.constexpr, STORE: tl.constexpr, R: tl.constexpr, CI: tl.constexpr,
                     ACC: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)  # plane (axis 0: up to 2^31 - 1 programs)
    t = tl.program_id(1)  # tile
    ri = tl.arange(0, R)[:, None]
    ci = tl.arange(0, CI)[None, :]
    rows = (t // n_tw) * (R - 10) + ri
    cols = (t % n_tw) * (CI - 10) + ci
    base = p * H * W
    inb = (rows < H) & (cols < W)
    xv = tl.load(x_ptr + base + rows * W + cols, mask=inb, other=0.0).to(ACC)
    yv = tl.load(y_ptr + base + rows * W + cols, mask=inb, other=0.0).to(ACC)
    own = inb & (ri < R - 10) & (ci < CI - 10)
    d = tl.where(own, xv - yv, 0.0)
    sq = tl.sum(tl.sum(d * d, axis=1), axis=0)
    ab = tl.sum(tl.sum(tl.abs(d), axis=1), axis=0)
    val_sum = sq * 0.0
    if MODE > 0:
        gh = _band(win_ptr, CI, True, ACC)   # (t @ gh)[i, j] = sum_k g[k] t[i, j + k]
        gv = _band(win_ptr, R, False, ACC)   # (gv @ t)[i, j] = sum_k g[k] t[i + k, j]
        m1 = _blur(xv, gv, gh)
        m2 = _blur(yv, gv, gh)
        exx = _blur(xv * xv, gv, gh)
        eyy = _blur(yv * yv, gv, gh)
        exy = _blur(xv * yv, gv, gh)
        valid = (ri < R - 10) & (ci < CI - 10) & (rows < Ho) & (cols < Wo)
        s11 = exx - m1 * m1
        s22 = eyy - m2 * m2
        s12 = exy - m1 * m2
        A2 = 2.0 * s12 + 0.0009
        iB2 = 1.0 / (s11 + s22 + 0.0009)
        cs = A2 * iB2
        if MODE == 1:
            A1 = 2.0 * m1 * m2 + 0.0001
            iB1 = 1.0 / (m1 * m1 + m2 * m2 + 0.0001)
            lum = A1 * iB1
            val = lum * cs
            dl = (2.0 * m2 - 2.0 * m1 * lum) * iB1
            dcs = (2.0 * m1 * cs - 2.0 * m2) * iB2
            d_mu = dl * cs + lum * dcs
            d_xx = -lum * cs * iB2
            d_xy = 2.0 * lum * iB2
        else:
            val = cs
            d_mu = (2.0 * m1 * cs - 2.0 * m2) * iB2
            d_xx = -cs * iB2
            d_xy = 2.0 * iB2
        val = tl.where(valid, val, 0.0)
        val_sum = tl.sum(tl.sum(val, axis=1), axis=0)
        if STORE:
            plane = Ho * Wo
            cp = coef_ptr + p * 3 * plane + rows * Wo + cols
            tl.store(cp, d_mu, mask=valid)
            tl.store(cp + plane, d_xx, mask=valid)
            tl.store(cp + 2 * plane, d_xy, mask=valid)
    out = part_ptr + (p * n_tiles + t) * 3
    tl.store(out, sq)
    tl.store(out + 1, ab)
    tl.store(out + 2, val_sum)


@triton.jit
def _ssim_bwd_kernel(x_ptr, y_ptr, gs_ptr, win_ptr, coef_ptr, dx_ptr, H, W, Ho, Wo, n_tw,
                     HAS_SSIM: tl.constexpr, R: tl.constexpr, CI: tl.constexpr, ACC: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)  # plane (axis 0: up to 2^31 - 1 programs)
    t = tl.program_id(1)  # tile
    ri = tl.arange(0, R)[:, None]
    ci = tl.arange(0, CI)[None, :]
    rows = (t // n_tw) * (R - 10) + ri
    cols = (t % n_tw) * (CI - 10) + ci
    base = p * H * W
    own = (rows < H) & (cols < W) & (ri < R - 10) & (ci < CI - 10)
    xv = tl.load(x_ptr + base + rows * W + cols, mask=own, other=0.0).to(ACC)
    yv = tl.load(y_ptr + base + rows * W + cols, mask=own, other=0.0).to(ACC)
    a = tl.load(gs_ptr + p * 3)  # grad_stats pre-scaled: 2/(HW), 1/(HW), 1/(Ho*Wo)
    b = tl.load(gs_ptr + p * 3 + 1)
    d = xv - yv
    sign = tl.where(d > 0, 1.0, 0.0) - tl.where(d < 0, 1.0, 0.0)
    g_out = a * d + b * sign
    if HAS_SSIM:
        plane = Ho * Wo
        s = tl.load(gs_ptr + p * 3 + 2)
        # coefficient maps over output positions (rows - 10, cols - 10) .. , zero outside the valid region
        cr = rows - 10
        cc = cols - 10
        cm = (cr >= 0) & (cr < Ho) & (cc >= 0) & (cc < Wo)
        cbase = coef_ptr + p * 3 * plane + cr * Wo + cc
        gh = _band(win_ptr, CI, True, ACC)
        gv = _band(win_ptr, R, False, ACC)
        t0 = _blur(tl.load(cbase, mask=cm, other=0.0).to(ACC), gv, gh)
        t1 = _blur(tl.load(cbase + plane, mask=cm, other=0.0).to(ACC), gv, gh)
        t2 = _blur(tl.load(cbase + 2 * plane, mask=cm, other=0.0).to(ACC), gv, gh)
        g_out += s * (t0 + 2.0 * xv * t1 + yv * t2)
    tl.store(dx_ptr + base + rows * W + cols, g_out.to(dx_ptr.dtype.element_ty), mask=own)


def _check(x: torch.Tensor, y: torch.Tensor, mode: int) -> None:
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(f"ssim: expected same-shaped [N, C, H, W] inputs, got {tuple(x.shape)} and {tuple(y.shape)}")
    if mode not in (0, 1, 2):
        raise ValueError("ssim: mode must be 0 (none), 1 (ssim) or 2 (cs)")
    if mode and (x.shape[-2] < WIN or x.shape[-1] < WIN):
        raise ValueError(f"ssim: SSIM needs images of at least 11x11 pixels, got {x.shape[-2]}x{x.shape[-1]}")


def ssim_fwd(x: torch.Tensor, y: torch.Tensor, mode: int, save_coef: bool):
    """(stats [N,C,3] = mean (x-y)^2, mean |x-y|, mean SSIM/cs; coef [N,C,3,H-10,W-10] or empty)."""
    _check(x, y, mode)
    x, y = x.contiguous(), y.contiguous()
    n, c, h, w = x.shape
    p = n * c
    acc = acc_dtype(x.dtype)
    ho, wo = (h - HALO, w - HALO) if mode else (0, 0)
    store = bool(save_coef) and mode > 0
    coef = x.new_empty((n, c, 3, ho, wo) if store else (0,), dtype=acc)
    n_tw, n_th = triton.cdiv(w, CI - HALO), triton.cdiv(h, R - HALO)
    n_tiles = n_tw * n_th
    part = torch.empty((p, n_tiles, 3), dtype=acc, device=x.device)
    _ssim_fwd_kernel[(p, n_tiles)](
        x, y, _window(x.device, acc), coef, part, h, w, ho, wo, n_tw, n_tiles,
        MODE=mode, STORE=store, R=R, CI=CI, ACC=tl_dtype(x.dtype))
    sums = part.sum(1)
    stats = torch.empty_like(sums)
    stats[:, :2] = sums[:, :2] * (1.0 / (h * w))
    stats[:, 2] = sums[:, 2] * (1.0 / (ho * wo) if mode else 0.0)
    return stats.view(n, c, 3), coef


def ssim_bwd(grad_stats: torch.Tensor, x: torch.Tensor, y: torch.Tensor, coef: torch.Tensor, mode: int):
    """d(sum grad_stats * stats)/dx, dtype of x."""
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
    n_tw, n_th = triton.cdiv(w, CI - HALO), triton.cdiv(h, R - HALO)
    _ssim_bwd_kernel[(n * c, n_tw * n_th)](
        x, y, scaled, _window(x.device, acc), coef if mode else gs, dx, h, w, ho, wo, n_tw,
        HAS_SSIM=mode > 0, R=R, CI=CI, ACC=tl_dtype(x.dtype))
    return dx
