"""Dual-head patch HNeRV: (t, px, py) -> positional encoding -> conv decoder -> RGB patch + CLIP embedding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hnerv_fast.config.dual import HNeRVModelConfig
from hnerv_fast.models.blocks import HNeRVBlock, PositionalEncoding, activation


COORD_DIM = 3  # (t, px, py)


class DualHNeRV(nn.Module):
    """Parameter groups (for grad norms / stats): decoder (stem + blocks), rgb_head, clip_head."""

    GROUPS = ("decoder", "rgb_head", "clip_head")

    def __init__(self, config: HNeRVModelConfig, clip_dim: int):
        """``config`` is the (validated) `model` config section; ``clip_dim`` the width of the CLIP targets."""
        super().__init__()
        self.config, self.clip_dim = config, clip_dim
        self.fc_hw = tuple(config.fc_hw)
        self.encoding = PositionalEncoding(config.embed_spec.base, config.embed_spec.levels)
        fc_h, fc_w = self.fc_hw
        self.stem = nn.Linear(self.encoding.out_features(COORD_DIM), config.fc_dim * fc_h * fc_w)
        # HNeRV's stem is a block of its own (a 1x1 conv followed by the activation), not a bare linear map
        # that the first block's convolution would simply compose with
        self.stem_act = activation(config.act)
        blocks, ngf = [], config.fc_dim
        for stride, kernel, width in zip(config.dec_strds, config.kernels(), config.widths()):
            blocks.append(HNeRVBlock(ngf, width, stride, kernel, config.act))
            ngf = width
        self.blocks = nn.Sequential(*blocks)
        self.rgb_head = nn.Conv2d(ngf, 3, 3, padding=1)
        self.clip_head = nn.Sequential(nn.Linear(ngf, 2 * ngf), nn.ReLU(), nn.Linear(2 * ngf, clip_dim))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "decoder": [*self.stem.parameters(), *self.blocks.parameters()],
            "rgb_head": list(self.rgb_head.parameters()),
            "clip_head": list(self.clip_head.parameters()),
        }

    def forward(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """coords [N, 3] in [0, 1] -> (rgb [N, 3, ph, pw] in [0, 1] unless out_act=none, clip [N, D] unit norm)."""
        if coords.dim() != 2 or coords.shape[1] != COORD_DIM:
            raise ValueError(f"coords must be [N, {COORD_DIM}], got {tuple(coords.shape)}")
        fc_h, fc_w = self.fc_hw
        x = self.stem_act(self.stem(self.encoding(coords))).view(coords.shape[0], self.config.fc_dim, fc_h, fc_w)
        features = self.blocks(x)
        rgb = self.rgb_head(features).float()
        # The output activation runs in float32 under autocast: `(tanh + 1) * 0.5` in bf16 (8-bit mantissa)
        # rounds the image to steps of 1/256 on [0.5, 1), noise the size of a well-fitted frame's error
        # (50 dB is an RMS error of 0.003; the 300-epoch default trained 0.3-0.4 dB lower with it).
        if self.config.out_act == "tanh":
            rgb = (torch.tanh(rgb) + 1) * 0.5
        elif self.config.out_act == "sigmoid":
            rgb = torch.sigmoid(rgb)
        # normalised in float32 too: a bf16 unit vector's norm is off by up to 4e-3, and the CLIP loss
        # 1 - <embedding, target> assumes unit vectors
        clip = F.normalize(self.clip_head(features.mean(dim=(2, 3))).float(), dim=-1)
        return rgb, clip
