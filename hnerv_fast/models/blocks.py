"""Layers shared by the models: positional encoding, HNeRV upsampling block, activations."""
from __future__ import annotations

import math

import torch
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
    """conv(k) to out·s² channels -> PixelShuffle(s) -> activation: one ×s upsampling stage."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, act: str):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch * stride * stride, kernel, padding=kernel // 2)
        self.shuffle = nn.PixelShuffle(stride) if stride > 1 else nn.Identity()
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shuffle(self.conv(x)))
