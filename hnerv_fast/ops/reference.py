"""Plain-torch definitions of the fused ops: the definition of correct.

Every fast backend (C++ CPU, CUDA, Triton) is tested against the functions in this module, and
the SSIM / MS-SSIM functions are in turn tested against pytorch-msssim.

Conventions (shared by all backends):

* images are ``[N, C, H, W]`` floating tensors with values in ``[0, 1]`` (data range 1);
* per-sample results are ``[N]`` tensors; the caller takes ``.mean()`` for a batch loss;
* half / bfloat16 inputs are computed in float32 (results are float32); float64 stays float64.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# SSIM constants (pytorch-msssim defaults with data_range = 1).
SSIM_WIN_SIZE = 11
SSIM_WIN_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_C1 = SSIM_K1**2
SSIM_C2 = SSIM_K2**2
MS_SSIM_WEIGHTS: Tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
PSNR_EPS = 1e-9

# kind -> (w_L2, w_L1, w_(1-SSIM), w_(1-MS-SSIM))
FUSION_WEIGHTS: Dict[str, Tuple[float, float, float, float]] = {
    "L2": (1.0, 0.0, 0.0, 0.0),
    "L1": (0.0, 1.0, 0.0, 0.0),
    "SSIM": (0.0, 0.0, 1.0, 0.0),
    "MS-SSIM": (0.0, 0.0, 0.0, 1.0),
    "Fusion1": (0.3, 0.0, 0.7, 0.0),
    "Fusion2": (0.0, 0.3, 0.7, 0.0),
    "Fusion3": (0.5, 0.0, 0.5, 0.0),
    "Fusion4": (0.0, 0.5, 0.5, 0.0),
    "Fusion5": (0.7, 0.0, 0.3, 0.0),
    "Fusion6": (0.0, 0.7, 0.3, 0.0),
    "Fusion7": (0.7, 0.3, 0.0, 0.0),
    "Fusion8": (0.5, 0.5, 0.0, 0.0),
    "Fusion9": (0.0, 0.9, 0.1, 0.0),
    "Fusion10": (0.0, 0.7, 0.0, 0.3),
    "Fusion11": (0.0, 0.9, 0.0, 0.1),
    "Fusion12": (0.0, 0.8, 0.0, 0.2),
}
PIXEL_LOSSES: Tuple[str, ...] = ("L1", "L2", "SSIM", "MS-SSIM") + tuple(f"Fusion{i}" for i in range(1, 13))


# ----------------------------------------------------------------------------------------------
# argument checks (shared with the fast paths)
# ----------------------------------------------------------------------------------------------
def check_pair(pred: Tensor, target: Tensor, name: str) -> None:
    """Raise ValueError unless pred/target are same-shaped floating [N, C, H, W] tensors."""
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise ValueError(f"{name}: pred and target must be tensors")
    if pred.dim() != 4:
        raise ValueError(f"{name}: expected pred of shape [N, C, H, W], got {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    if not pred.is_floating_point() or not target.is_floating_point():
        raise ValueError(f"{name}: expected floating tensors, got {pred.dtype} and {target.dtype}")
    if pred.device != target.device:
        raise ValueError(f"{name}: pred on {pred.device} but target on {target.device}")
    if pred.numel() == 0:
        raise ValueError(f"{name}: empty input {tuple(pred.shape)}")


def check_ssim_size(shape: Sequence[int], name: str) -> None:
    h, w = int(shape[-2]), int(shape[-1])
    if h < SSIM_WIN_SIZE or w < SSIM_WIN_SIZE:
        raise ValueError(
            f"{name}: SSIM needs images of at least {SSIM_WIN_SIZE}x{SSIM_WIN_SIZE} pixels "
            f"(valid {SSIM_WIN_SIZE}-tap Gaussian window), got {h}x{w}"
        )


def loss_weights(kind: str) -> Tuple[float, float, float, float]:
    try:
        return FUSION_WEIGHTS[kind]
    except KeyError:
        raise ValueError(f"unknown pixel loss {kind!r}; expected one of {PIXEL_LOSSES}") from None


def _compute_pair(pred: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
    """Both in the wider of their dtypes, at least float32: a bf16 prediction is measured against the
    unrounded target, and an f32 / f64 pair in float64 (as the fused backends promote it)."""
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    return pred.to(dtype), target.to(dtype)


# ----------------------------------------------------------------------------------------------
# SSIM / MS-SSIM
# ----------------------------------------------------------------------------------------------
def gaussian_window(size: int = SSIM_WIN_SIZE, sigma: float = SSIM_WIN_SIGMA, dtype=torch.float64,
                    device=None) -> Tensor:
    """Normalised 1-D Gaussian window of ``size`` taps (centre at size // 2), computed in float64."""
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return g.to(dtype=dtype, device=device)


def gaussian_window_list(size: int = SSIM_WIN_SIZE, sigma: float = SSIM_WIN_SIGMA) -> List[float]:
    """The same window as Python floats (for kernels that take it as constants)."""
    e = [math.exp(-((k - size // 2) ** 2) / (2.0 * sigma**2)) for k in range(size)]
    s = sum(e)
    return [v / s for v in e]


def blur_valid(x: Tensor, win: Tensor) -> Tensor:
    """Separable depthwise Gaussian blur without padding: [N,C,H,W] -> [N,C,H-10,W-10]."""
    c = x.shape[1]
    k = win.numel()
    x = F.conv2d(x, win.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, win.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim_maps(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-pixel SSIM and contrast-structure (cs) maps over the valid region."""
    win = gaussian_window(dtype=x.dtype, device=x.device)
    mu1 = blur_valid(x, win)
    mu2 = blur_valid(y, win)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s11 = blur_valid(x * x, win) - mu1_sq
    s22 = blur_valid(y * y, win) - mu2_sq
    s12 = blur_valid(x * y, win) - mu12
    cs = (2 * s12 + SSIM_C2) / (s11 + s22 + SSIM_C2)
    ssim = (2 * mu12 + SSIM_C1) / (mu1_sq + mu2_sq + SSIM_C1) * cs
    return ssim, cs


def ssim_per_channel(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """(mean SSIM, mean cs) per image and channel, both [N, C]."""
    s, cs = ssim_maps(x, y)
    return s.flatten(2).mean(-1), cs.flatten(2).mean(-1)


def ssim_per_sample(pred: Tensor, target: Tensor) -> Tensor:
    """SSIM per sample [N]: pytorch-msssim ``ssim(..., data_range=1, size_average=False)``."""
    check_pair(pred, target, "ssim")
    check_ssim_size(pred.shape, "ssim")
    x, y = _compute_pair(pred, target)
    return ssim_per_channel(x, y)[0].mean(1)


def ms_ssim_levels(h: int, w: int) -> int:
    """Number of MS-SSIM scales used for an ``h x w`` image.

    The standard 5 scales need every scale to hold the 11-px window (min side >= 161, where
    pytorch-msssim also works). Smaller images use the largest L <= 5 with all L scales >= 11 px;
    each 2x2 average pool maps a side s to ceil(s / 2) (pytorch-msssim pads odd sides by one).
    """
    if min(h, w) < SSIM_WIN_SIZE:
        return 0
    levels = 1
    while levels < len(MS_SSIM_WEIGHTS):
        h, w = (h + 1) // 2, (w + 1) // 2
        if min(h, w) < SSIM_WIN_SIZE:
            break
        levels += 1
    return levels


def ms_ssim_weights(levels: int) -> List[float]:
    """The first ``levels`` pytorch-msssim weights, renormalised to sum to 1 when levels < 5."""
    w = list(MS_SSIM_WEIGHTS[:levels])
    if levels == len(MS_SSIM_WEIGHTS):
        return w
    s = sum(w)
    return [v / s for v in w]


def ms_ssim_downsample(x: Tensor) -> Tensor:
    """2x2 average pool as pytorch-msssim does it (zero padding of 1 on odd sides, pad counted)."""
    return F.avg_pool2d(x, kernel_size=2, padding=[x.shape[-2] % 2, x.shape[-1] % 2])


def ms_ssim_per_sample(pred: Tensor, target: Tensor) -> Tensor:
    """MS-SSIM per sample [N].

    On images whose smaller side is >= 161 px this is exactly pytorch-msssim's ``ms_ssim``
    (5 scales, weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), relu(cs) at the first 4 scales,
    relu(ssim) at the last, product per channel, mean over channels). Smaller images (the patches
    in this project, e.g. 32x32) use L = ``ms_ssim_levels(H, W)`` scales — the largest number for
    which every scale still holds the 11-px window — with the first L weights renormalised to sum
    to 1 (see ``ms_ssim_weights``). Images smaller than 11 px raise ValueError.
    """
    check_pair(pred, target, "ms_ssim")
    check_ssim_size(pred.shape, "ms_ssim")
    x, y = _compute_pair(pred, target)
    levels = ms_ssim_levels(x.shape[-2], x.shape[-1])
    weights = ms_ssim_weights(levels)
    out = None
    for i in range(levels):
        s, cs = ssim_per_channel(x, y)
        v = torch.relu(s if i == levels - 1 else cs) ** weights[i]
        out = v if out is None else out * v
        if i < levels - 1:
            x, y = ms_ssim_downsample(x), ms_ssim_downsample(y)
    return out.mean(1)


# ----------------------------------------------------------------------------------------------
# pixel losses and PSNR
# ----------------------------------------------------------------------------------------------
def l1_per_sample(pred: Tensor, target: Tensor) -> Tensor:
    x, y = _compute_pair(pred, target)
    return (x - y).abs().flatten(1).mean(1)


def l2_per_sample(pred: Tensor, target: Tensor) -> Tensor:
    x, y = _compute_pair(pred, target)
    return (x - y).pow(2).flatten(1).mean(1)


def pixel_loss(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """Per-sample loss [N]: w_L2*MSE + w_L1*MAE + w_s*(1-SSIM) + w_ms*(1-MS-SSIM) (FUSION_WEIGHTS)."""
    w_l2, w_l1, w_s, w_ms = loss_weights(kind)
    check_pair(pred, target, "pixel_loss")
    if w_s or w_ms:
        check_ssim_size(pred.shape, f"pixel_loss({kind})")
    loss = None

    def add(term: Tensor) -> None:
        nonlocal loss
        loss = term if loss is None else loss + term

    if w_l2:
        add(w_l2 * l2_per_sample(pred, target))
    if w_l1:
        add(w_l1 * l1_per_sample(pred, target))
    if w_s:
        add(w_s * (1.0 - ssim_per_sample(pred, target)))
    if w_ms:
        add(w_ms * (1.0 - ms_ssim_per_sample(pred, target)))
    return loss


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """PSNR per sample [N] = -10 log10(MSE + 1e-9), images in [0, 1]."""
    check_pair(pred, target, "patch_psnr")
    return -10.0 * torch.log10(l2_per_sample(pred, target) + PSNR_EPS)


# ----------------------------------------------------------------------------------------------
# grouped gradient norms
# ----------------------------------------------------------------------------------------------
def _present(ts: Iterable[Optional[Tensor]]) -> List[Tensor]:
    return [t for t in ts if t is not None]


def grouped_grad_norms(groups: Dict[str, List[Optional[Tensor]]], max_norm: Optional[float] = None) -> Tensor:
    """[total, norm_group_1, ...] (float32, L2 norms; None entries skipped; empty group -> 0).

    With ``max_norm`` every tensor is also scaled in place by min(1, max_norm / (total + 1e-6)).
    """
    all_t = [t for ts in groups.values() for t in _present(ts)]
    device = all_t[0].device if all_t else torch.device("cpu")
    sq = []
    for ts in groups.values():
        ts = _present(ts)
        s = torch.zeros((), dtype=torch.float32, device=device)
        for t in ts:
            s = s + t.detach().float().pow(2).sum()
        sq.append(s)
    sq_t = torch.stack(sq) if sq else torch.zeros(0, device=device)
    out = torch.cat([sq_t.sum().reshape(1), sq_t]).sqrt()
    if max_norm is not None and all_t:
        coef = (max_norm / (out[0] + 1e-6)).clamp(max=1.0)
        with torch.no_grad():
            for t in all_t:
                t.mul_(coef.to(t.dtype))
    return out
