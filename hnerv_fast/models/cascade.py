"""Hybrid ViT cascade (X-ray -> CT): one conditional-diffusion stage per resolution.

A stage predicts ``v`` for a noisy volume ``x_t [B, 1, S, S, S]`` given the timestep ``t [B]``,
the X-rays ``xrays [B, V, X, X]`` and, for every stage after the first, the previous stage's volume
(any cubic size; it is upsampled trilinearly to ``S``; zeros are used when it is ``None``).

Data flow of :class:`CascadeStage`::

    t ──> TimestepEmbedder ──> temb [B, dim]
    xrays ──> XrayEncoder(temb) ──> feature maps [B, V, Cl, S, S], context [B, dim],
                                    (X-ray tokens [B, V*G*G, dim] when cross_attention)
    feature maps ──> DepthLift (learned per-depth weights, per view orientation) ──> [B, Cl, S, S, S]
    cat(x_t, lifted, prev_up) ──> patchify (p^3) ──> Linear + learned pos-emb ──> tokens [B, G^3, dim]
    tokens ──> depth x AdaLNBlock(cond = temb + context [, X-ray tokens]) ──> AdaLN final layer
           ──> unpatchify ──> v_pred [B, 1, S, S, S]

(G = S / patch_size.) View orientations follow :mod:`hnerv_fast.models.drr`: the frontal image is
``(H, W)`` of the volume, the lateral image is ``(H, D)``; depth lifting spreads each view's
features back along its own ray axis, so the conditioning is geometrically aligned with the DRR
used by the physics loss.

The training loss and DDIM sampling of a stage are in :mod:`hnerv_fast.models.cascade_diffusion`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from hnerv_fast.models.drr import VIEWS
from hnerv_fast.models.vit3d import (AdaLNBlock, AdaLNFinalLayer, TimestepEmbedder, patchify3d,
                                     unpatchify3d)

__all__ = [
    "StageConfig",
    "reference_stage_configs",
    "tiny_stage_configs",
    "XrayEncoder",
    "DepthLift",
    "CascadeStage",
    "upsample_volume",
]


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------
@dataclass
class StageConfig:
    """Hyper-parameters of one cascade stage.

    name            stage name used in tags / checkpoint file names (e.g. ``"stage_64"``)
    volume_size     S: the stage predicts ``[B, 1, S, S, S]`` volumes
    voxel_dim       transformer width
    depth           number of AdaLN transformer blocks
    num_heads       attention heads (``voxel_dim % num_heads == 0``)
    patch_size      p: 3D patch edge (``S % p == 0``); tokens = (S/p)^3
    xray_size       X: X-rays are ``[B, V, X, X]``
    num_views       V (1 or 2)
    views           view names, ``len == num_views``; default ``("frontal", "lateral")[:V]``
    mlp_ratio       MLP hidden = mlp_ratio * voxel_dim
    encoder_channels  width of the 2D X-ray conv encoder
    lift_channels   channels of the lifted 3D X-ray feature volume fed to patchify
    cross_attention add cross-attention from volume tokens to X-ray tokens in every block
    dropout         MLP dropout
    grad_checkpointing  recompute transformer blocks in backward (saves memory for 128^3 / 256^3)
    """

    name: str
    volume_size: int
    voxel_dim: int
    depth: int
    num_heads: int
    patch_size: int
    xray_size: int
    num_views: int = 1
    views: Optional[tuple] = None
    mlp_ratio: float = 4.0
    encoder_channels: int = 32
    lift_channels: int = 8
    cross_attention: bool = False
    dropout: float = 0.0
    grad_checkpointing: bool = False

    def __post_init__(self):
        for f in ("volume_size", "voxel_dim", "depth", "num_heads", "patch_size", "xray_size",
                  "num_views", "encoder_channels", "lift_channels"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"StageConfig({self.name!r}).{f} must be a positive int, got {v!r}")
        if self.views is None:
            if self.num_views > len(VIEWS):
                raise ValueError(f"StageConfig({self.name!r}): num_views={self.num_views} but only "
                                 f"{len(VIEWS)} views exist {VIEWS}")
            self.views = VIEWS[: self.num_views]
        self.views = tuple(self.views)
        if len(self.views) != self.num_views:
            raise ValueError(f"StageConfig({self.name!r}): views={self.views} but "
                             f"num_views={self.num_views}")
        bad = [v for v in self.views if v not in VIEWS]
        if bad or len(set(self.views)) != len(self.views):
            raise ValueError(f"StageConfig({self.name!r}): views {self.views} must be distinct "
                             f"names from {VIEWS}")
        if self.volume_size % self.patch_size:
            raise ValueError(f"StageConfig({self.name!r}): volume_size {self.volume_size} is not "
                             f"divisible by patch_size {self.patch_size}")
        if self.voxel_dim % self.num_heads:
            raise ValueError(f"StageConfig({self.name!r}): voxel_dim {self.voxel_dim} is not "
                             f"divisible by num_heads {self.num_heads}")

    @property
    def grid(self) -> int:
        """Patch grid edge G = S / p."""
        return self.volume_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid ** 3

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["views"] = list(self.views)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StageConfig":
        d = dict(d)
        if d.get("views") is not None:
            d["views"] = tuple(d["views"])
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown StageConfig keys: {sorted(unknown)}")
        return cls(**d)


def reference_stage_configs(num_views: int = 2, xray_size: int = 512,
                            cross_attention: bool = False) -> list[StageConfig]:
    """The published stage settings: 64^3 256/4/4, 128^3 384/6/6, 256^3 512/8/8 (dim/depth/heads).
    Patch sizes (4, 8, 16) keep every stage at 4096 tokens."""
    common = dict(xray_size=xray_size, num_views=num_views, cross_attention=cross_attention,
                  encoder_channels=32, lift_channels=8)
    return [
        StageConfig("stage_64", 64, 256, 4, 4, patch_size=4, **common),
        StageConfig("stage_128", 128, 384, 6, 6, patch_size=8, grad_checkpointing=True, **common),
        StageConfig("stage_256", 256, 512, 8, 8, patch_size=16, grad_checkpointing=True, **common),
    ]


def tiny_stage_configs(num_views: int = 2, xray_size: int = 32, sizes: Sequence[int] = (16, 32),
                       cross_attention: bool = False) -> list[StageConfig]:
    """CPU-sized stages (default 16^3 and 32^3, width 64, depth 2, 2 heads, patch 4)."""
    return [StageConfig(f"stage_{s}", s, 64, 2, 2, patch_size=4, xray_size=xray_size,
                        num_views=num_views, encoder_channels=16, lift_channels=4,
                        mlp_ratio=2.0, cross_attention=cross_attention) for s in sizes]


# ------------------------------------------------------------------------------------------------
# X-ray encoder and depth lifting
# ------------------------------------------------------------------------------------------------
def _groups(c: int) -> int:
    return math.gcd(c, 8)


class _FiLMConv(nn.Module):
    """conv3x3 (stride s) -> GroupNorm -> FiLM(temb) -> SiLU."""

    def __init__(self, cin: int, cout: int, cond_dim: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(_groups(cout), cout)
        self.film = nn.Linear(cond_dim, 2 * cout)
        nn.init.normal_(self.film.weight, std=0.02)
        nn.init.zeros_(self.film.bias)

    def forward(self, x, cond):  # cond: [N, cond_dim] with N = x.shape[0]
        h = self.norm(self.conv(x))
        shift, scale = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        return F.silu(h * (1 + scale) + shift)


class XrayEncoder(nn.Module):
    """Shared 2D conv encoder applied to each view, conditioned on the timestep embedding (FiLM).

    ``forward(xrays [B, V, X, X], temb [B, dim]) -> (feat [B, V, lift_channels, S, S],
    context [B, dim], tokens [B, V*G*G, dim] | None)``. Stride-2 convs bring X down towards S
    (``floor(log2(X / S))`` of them), a final bilinear resize lands exactly on ``S x S``.
    ``context`` pools the encoder features over space, adds a learned per-view embedding and
    mixes the views with an MLP. ``tokens`` (only with cross-attention) pool the features onto the
    G x G patch grid, with a learned position/view embedding.
    """

    def __init__(self, cfg: StageConfig):
        super().__init__()
        C, dim = cfg.encoder_channels, cfg.voxel_dim
        self.cfg = cfg
        self.out_size = cfg.volume_size
        n_down = max(0, int(math.floor(math.log2(cfg.xray_size / cfg.volume_size))))
        self.stem = _FiLMConv(1, C, dim)
        self.down = nn.ModuleList(_FiLMConv(C, C, dim, stride=2) for _ in range(n_down))
        self.refine = _FiLMConv(C, C, dim)
        self.to_lift = nn.Conv2d(C, cfg.lift_channels, 1)
        self.view_embed = nn.Parameter(torch.zeros(cfg.num_views, C))
        nn.init.normal_(self.view_embed, std=0.02)
        self.context = nn.Sequential(nn.Linear(cfg.num_views * C, dim), nn.SiLU(),
                                     nn.Linear(dim, dim))
        if cfg.cross_attention:
            self.token_proj = nn.Linear(C, dim)
            self.token_pos = nn.Parameter(torch.zeros(1, cfg.num_views * cfg.grid ** 2, dim))
            nn.init.normal_(self.token_pos, std=0.02)

    def forward(self, xrays: torch.Tensor, temb: torch.Tensor):
        B, V, X, Y = xrays.shape
        x = xrays.reshape(B * V, 1, X, Y)
        cond = temb.repeat_interleave(V, dim=0)
        h = self.stem(x, cond)
        for layer in self.down:
            h = layer(h, cond)
        if h.shape[-1] != self.out_size or h.shape[-2] != self.out_size:
            h = F.interpolate(h, size=(self.out_size, self.out_size), mode="bilinear",
                              align_corners=False)
        h = self.refine(h, cond)                                     # [B*V, C, S, S]
        C = h.shape[1]
        feat = self.to_lift(h).reshape(B, V, -1, self.out_size, self.out_size)
        pooled = h.mean(dim=(-2, -1)).reshape(B, V, C) + self.view_embed
        context = self.context(pooled.reshape(B, V * C))
        tokens = None
        if self.cfg.cross_attention:
            g = self.cfg.grid
            t = F.adaptive_avg_pool2d(h, g)                           # [B*V, C, g, g]
            t = t.reshape(B, V, C, g * g).permute(0, 1, 3, 2).reshape(B, V * g * g, C)
            tokens = self.token_proj(t) + self.token_pos
        return feat, context, tokens


class DepthLift(nn.Module):
    """Lift per-view 2D feature maps to one 3D feature volume with learned per-depth weights.

    For view ``v`` with features ``f [B, C, rows, cols]`` the lifted volume is
    ``f * w_v[c, k] + b_v[c, k]`` broadcast along that view's ray axis ``k`` (frontal: D, image
    ``(H, W)``; lateral: W, image ``(H, D)``). Views are averaged. ``forward(feat [B, V, C, S, S])
    -> [B, C, S, S, S]``.
    """

    def __init__(self, views: Sequence[str], channels: int, size: int):
        super().__init__()
        self.views = tuple(views)
        self.weight = nn.Parameter(torch.ones(len(self.views), channels, size))
        self.bias = nn.Parameter(torch.zeros(len(self.views), channels, size))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        out = None
        for i, view in enumerate(self.views):
            f = feat[:, i]                                            # [B, C, rows, cols]
            w, b = self.weight[i], self.bias[i]                       # [C, S]
            if view == "frontal":      # f[b,c,h,w] -> vol[b,c,d,h,w], d along the ray
                vol = f.unsqueeze(2) * w[None, :, :, None, None] + b[None, :, :, None, None]
            else:                      # lateral: f[b,c,h,d] -> vol[b,c,d,h,w], w along the ray
                vol = (f.transpose(-1, -2).unsqueeze(-1) * w[None, :, None, None, :]
                       + b[None, :, None, None, :])
            out = vol if out is None else out + vol
        return out / len(self.views)


# ------------------------------------------------------------------------------------------------
# Stage model
# ------------------------------------------------------------------------------------------------
def upsample_volume(volume: torch.Tensor, size: int) -> torch.Tensor:
    """Trilinear resize of ``[B, C, s, s, s]`` to ``[B, C, size, size, size]``
    (``align_corners=False``; identity if already that size)."""
    if tuple(volume.shape[-3:]) == (size, size, size):
        return volume
    return F.interpolate(volume, size=(size, size, size), mode="trilinear", align_corners=False)


class CascadeStage(nn.Module):
    """One v-prediction stage of the cascade (see module doc for the data flow).

    ``forward(x_t [B,1,S,S,S], t [B] long, xrays [B,V,X,X], prev_volume [B,1,S',S',S'] | None)
    -> v_pred [B,1,S,S,S]``. Raises ``ValueError`` on any shape that does not match the config.
    """

    def __init__(self, config: StageConfig):
        super().__init__()
        cfg = config
        self.config = cfg
        dim, p = cfg.voxel_dim, cfg.patch_size
        self.in_channels = 1 + cfg.lift_channels + 1     # noisy volume, lifted features, prev
        self.t_embed = TimestepEmbedder(dim)
        self.encoder = XrayEncoder(cfg)
        self.lift = DepthLift(cfg.views, cfg.lift_channels, cfg.volume_size)
        self.patch_embed = nn.Linear(self.in_channels * p ** 3, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            AdaLNBlock(dim, cfg.num_heads, cond_dim=dim, mlp_ratio=cfg.mlp_ratio,
                       cross_attention=cfg.cross_attention, context_dim=dim, dropout=cfg.dropout)
            for _ in range(cfg.depth))
        self.final = AdaLNFinalLayer(dim, dim, p ** 3)

    # -- validation -----------------------------------------------------------------------------
    def check_inputs(self, x_t, t, xrays, prev_volume=None) -> None:
        """Raise ``ValueError`` naming the offending input when shapes do not fit the config."""
        cfg = self.config
        S, V, X = cfg.volume_size, cfg.num_views, cfg.xray_size
        if x_t.dim() != 5 or tuple(x_t.shape[1:]) != (1, S, S, S):
            raise ValueError(f"{cfg.name}: x_t must be [B, 1, {S}, {S}, {S}], "
                             f"got {list(x_t.shape)}")
        B = x_t.shape[0]
        if t.dim() != 1 or t.shape[0] != B:
            raise ValueError(f"{cfg.name}: t must be [B]=[{B}], got {list(t.shape)}")
        if xrays.dim() != 4 or tuple(xrays.shape) != (B, V, X, X):
            raise ValueError(f"{cfg.name}: xrays must be [B, V, X, X] = [{B}, {V}, {X}, {X}] "
                             f"(views {cfg.views}), got {list(xrays.shape)}")
        if prev_volume is not None:
            ps = prev_volume.shape
            if (prev_volume.dim() != 5 or ps[0] != B or ps[1] != 1
                    or not (ps[2] == ps[3] == ps[4])):
                raise ValueError(f"{cfg.name}: prev_volume must be [B, 1, s, s, s] with B={B}, "
                                 f"got {list(ps)}")

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, xrays: torch.Tensor,
                prev_volume: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_inputs(x_t, t, xrays, prev_volume)
        cfg = self.config
        S, p = cfg.volume_size, cfg.patch_size
        temb = self.t_embed(t)
        feat, context, xtokens = self.encoder(xrays.to(temb.dtype), temb)
        cond = temb + context
        lifted = self.lift(feat)
        if prev_volume is None:
            prev = torch.zeros_like(x_t)
        else:
            prev = upsample_volume(prev_volume.to(x_t.dtype), S)
        inp = torch.cat([x_t, lifted.to(x_t.dtype), prev], dim=1)
        tokens = self.patch_embed(patchify3d(inp, p)) + self.pos_embed
        for block in self.blocks:
            if cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, cond, xtokens, use_reentrant=False)
            else:
                tokens = block(tokens, cond, xtokens)
        out = self.final(tokens, cond)
        return unpatchify3d(out, p, 1, cfg.grid)
