"""Layers shared by the models: positional encoding, HNeRV upsampling block, activations."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hnerv_fast.names import ACTIVATIONS

_ACTIVATIONS = {  # keys: names.ACTIVATIONS (tests/test_config.py)
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class PositionalEncoding(nn.Module):
    """NeRV encoding: for each coordinate v and level k, sin(v·base^k·π) and cos(v·base^k·π).

    Input [N, C] -> output [N, C·2·levels], ordered per coordinate as (sin levels..., cos levels...).
    """

    def __init__(self, base: float, levels: int):
        super().__init__()
        freqs = torch.tensor([base**k * math.pi for k in range(levels)], dtype=torch.float64)
        self.register_buffer("freqs", freqs.float(), persistent=False)
        self.levels = levels

    def out_features(self, in_features: int) -> int:
        return in_features * 2 * self.levels

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        angles = coords.unsqueeze(-1) * self.freqs  # [N, C, L]
        return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)


class HNeRVBlock(nn.Module):
    """conv(k) to out·s² channels -> PixelShuffle(s) -> activation: one ×s upsampling stage.

    The parameters are those of ``nn.Conv2d`` followed by ``nn.PixelShuffle`` (output channel ``c·s² + i·s + j``
    of the convolution becomes pixel ``(i, j)`` of channel ``c``). The forward pass runs the convolution with its
    output channels reordered sub-pixel-major (``(i·s + j)·out + c``, a small per-step weight permute), so that
    the shuffle reads each sub-pixel's channels contiguously: under torch.compile on CPU the shuffle and the
    activation then fuse into a vectorised kernel instead of a scalar gather (1.06x on the default step)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, act: str):
        super().__init__()
        self.stride, self.out_ch = stride, out_ch
        self.conv = nn.Conv2d(in_ch, out_ch * stride * stride, kernel, padding=kernel // 2)
        self.act = activation(act)
        # Index of each sub-pixel-major output channel in the convolution's own order. The bias is gathered
        # with it rather than viewed: torch 2.11's inductor cannot lower a convolution whose bias is a view.
        sub_pixel_major = torch.arange(out_ch * stride * stride).view(out_ch, stride * stride).t().flatten()
        self.register_buffer("sub_pixel_major", sub_pixel_major, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, c = self.stride, self.out_ch
        if s == 1:
            return self.act(self.conv(x))
        weight = self.conv.weight.unflatten(0, (c, s * s)).transpose(0, 1).flatten(0, 1)
        bias = self.conv.bias[self.sub_pixel_major]
        y = F.conv2d(x, weight, bias, padding=self.conv.padding)  # [B, (i, j, c), H, W]
        n, _, h, w = y.shape
        y = y.unflatten(1, (s, s, c)).permute(0, 3, 4, 1, 5, 2).reshape(n, c, h * s, w * s)
        return self.act(y)
