"""Dual-head patch HNeRV: (t, px, py) -> positional encoding -> conv decoder -> RGB patch + CLIP embedding."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hnerv_fast.models.blocks import HNeRVBlock, PositionalEncoding, activation


@dataclass(frozen=True)
class DualHNeRVSpec:
    """Architecture numbers (built from the `model` config section plus data/CLIP sizes)."""

    pe_base: float = 1.25
    pe_levels: int = 80
    fc_dim: int = 96
    fc_hw: tuple[int, int] = (4, 4)
    dec_strds: tuple[int, ...] = (2, 2, 2)
    ks_min: int = 1
    ks_max: int = 5
    reduce: float = 1.2
    lower_width: int = 32
    act: str = "gelu"
    out_act: str = "tanh"
    clip_dim: int = 512
    coord_dim: int = 3

    def output_size(self) -> tuple[int, int]:
        scale = math.prod(self.dec_strds)
        return self.fc_hw[0] * scale, self.fc_hw[1] * scale

    def widths(self) -> list[int]:
        """Channel width after each block: shrinks by `reduce` per stage, floored at lower_width."""
        widths, ngf = [], self.fc_dim
        for _ in self.dec_strds:
            ngf = int(max(round(ngf / self.reduce), self.lower_width))
            widths.append(ngf)
        return widths

    def kernels(self) -> list[int]:
        """Kernel size grows by 2 per stage from ks_min, capped at ks_max (HNeRV's decoder)."""
        return [min(self.ks_min + 2 * i, self.ks_max) for i in range(len(self.dec_strds))]


class DualHNeRV(nn.Module):
    """Parameter groups (for grad norms / stats): decoder (stem + blocks), rgb_head, clip_head."""

    GROUPS = ("decoder", "rgb_head", "clip_head")

    def __init__(self, spec: DualHNeRVSpec):
        super().__init__()
        self.spec = spec
        self.encoding = PositionalEncoding(spec.pe_base, spec.pe_levels)
        fc_h, fc_w = spec.fc_hw
        self.stem = nn.Linear(self.encoding.out_features(spec.coord_dim), spec.fc_dim * fc_h * fc_w)
        # HNeRV's stem is a block of its own (a 1x1 conv followed by the activation), not a bare linear map
        # that the first block's convolution would simply compose with
        self.stem_act = activation(spec.act)
        blocks, ngf = [], spec.fc_dim
        for stride, kernel, width in zip(spec.dec_strds, spec.kernels(), spec.widths()):
            blocks.append(HNeRVBlock(ngf, width, stride, kernel, spec.act))
            ngf = width
        self.blocks = nn.Sequential(*blocks)
        self.rgb_head = nn.Conv2d(ngf, 3, 3, padding=1)
        self.clip_head = nn.Sequential(nn.Linear(ngf, 2 * ngf), nn.ReLU(), nn.Linear(2 * ngf, spec.clip_dim))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "decoder": [*self.stem.parameters(), *self.blocks.parameters()],
            "rgb_head": list(self.rgb_head.parameters()),
            "clip_head": list(self.clip_head.parameters()),
        }

    def forward(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """coords [N, 3] in [0, 1] -> (rgb [N, 3, ph, pw] in [0, 1] unless out_act=none, clip [N, D] unit norm)."""
        if coords.dim() != 2 or coords.shape[1] != self.spec.coord_dim:
            raise ValueError(f"coords must be [N, {self.spec.coord_dim}], got {tuple(coords.shape)}")
        fc_h, fc_w = self.spec.fc_hw
        x = self.stem_act(self.stem(self.encoding(coords))).view(coords.shape[0], self.spec.fc_dim, fc_h, fc_w)
        features = self.blocks(x)
        rgb = self.rgb_head(features)
        if self.spec.out_act == "tanh":
            rgb = (torch.tanh(rgb) + 1) * 0.5
        elif self.spec.out_act == "sigmoid":
            rgb = torch.sigmoid(rgb)
        clip = F.normalize(self.clip_head(features.mean(dim=(2, 3))), dim=-1)
        return rgb, clip
