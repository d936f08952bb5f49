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

(S = ``stage.size``, G = S / ``stage.patch``; the stage's section of the config, config/cascade.py StageConfig,
is the model's spec.) View orientations follow :mod:`hnerv_fast.models.drr`: the frontal image is
``(H, W)`` of the volume, the lateral image is ``(H, D)``; depth lifting spreads each view's
features back along its own ray axis, so the conditioning is geometrically aligned with the DRR
used by the physics loss.

The training loss and DDIM sampling of a stage are in :mod:`hnerv_fast.models.cascade_diffusion`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from hnerv_fast.config.cascade import StageConfig, check_views
from hnerv_fast.models.vit3d import (AdaLNBlock, AdaLNFinalLayer, TimestepEmbedder, patchify3d,
                                     unpatchify3d)

__all__ = ["XrayEncoder", "DepthLift", "CascadeStage", "upsample_volume"]


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

    def __init__(self, stage: StageConfig, xray_size: int, num_views: int):
        super().__init__()
        C, dim = stage.encoder_channels, stage.width
        self.out_size = stage.size
        self.grid = stage.grid if stage.cross_attention else None
        n_down = max(0, int(math.floor(math.log2(xray_size / stage.size))))
        self.stem = _FiLMConv(1, C, dim)
        self.down = nn.ModuleList(_FiLMConv(C, C, dim, stride=2) for _ in range(n_down))
        self.refine = _FiLMConv(C, C, dim)
        self.to_lift = nn.Conv2d(C, stage.lift_channels, 1)
        self.view_embed = nn.Parameter(torch.zeros(num_views, C))
        nn.init.normal_(self.view_embed, std=0.02)
        self.context = nn.Sequential(nn.Linear(num_views * C, dim), nn.SiLU(),
                                     nn.Linear(dim, dim))
        if stage.cross_attention:
            self.token_proj = nn.Linear(C, dim)
            self.token_pos = nn.Parameter(torch.zeros(1, num_views * stage.grid ** 2, dim))
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
        if self.grid is not None:
            g = self.grid
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

    Built from the stage's config section, its name (messages) and the data's X-ray size and views.
    ``forward(x_t [B,1,S,S,S], t [B] long, xrays [B,V,X,X], prev_volume [B,1,S',S',S'] | None)
    -> v_pred [B,1,S,S,S]``. Raises ``ValueError`` on any shape that does not match.
    """

    def __init__(self, stage: StageConfig, name: str, xray_size: int, views: Sequence[str]):
        super().__init__()
        stage.validate(f"stages.{name}")
        check_views(views, "views")
        self.stage, self.name, self.xray_size, self.views = stage, name, int(xray_size), tuple(views)
        dim, p = stage.width, stage.patch
        self.in_channels = 1 + stage.lift_channels + 1     # noisy volume, lifted features, prev
        self.t_embed = TimestepEmbedder(dim)
        self.encoder = XrayEncoder(stage, self.xray_size, len(self.views))
        self.lift = DepthLift(self.views, stage.lift_channels, stage.size)
        self.patch_embed = nn.Linear(self.in_channels * p ** 3, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, stage.num_tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            AdaLNBlock(dim, stage.heads, cond_dim=dim, mlp_ratio=stage.mlp_ratio,
                       cross_attention=stage.cross_attention, context_dim=dim)
            for _ in range(stage.depth))
        self.final = AdaLNFinalLayer(dim, dim, p ** 3)

    @property
    def size(self) -> int:
        """S: the stage predicts ``[B, 1, S, S, S]`` volumes."""
        return self.stage.size

    # -- validation -----------------------------------------------------------------------------
    def check_inputs(self, x_t, t, xrays, prev_volume=None) -> None:
        """Raise ``ValueError`` naming the offending input when shapes do not fit the stage."""
        S, V, X = self.size, len(self.views), self.xray_size
        if x_t.dim() != 5 or tuple(x_t.shape[1:]) != (1, S, S, S):
            raise ValueError(f"{self.name}: x_t must be [B, 1, {S}, {S}, {S}], "
                             f"got {list(x_t.shape)}")
        B = x_t.shape[0]
        if t.dim() != 1 or t.shape[0] != B:
            raise ValueError(f"{self.name}: t must be [B]=[{B}], got {list(t.shape)}")
        if xrays.dim() != 4 or tuple(xrays.shape) != (B, V, X, X):
            raise ValueError(f"{self.name}: xrays must be [B, V, X, X] = [{B}, {V}, {X}, {X}] "
                             f"(views {self.views}), got {list(xrays.shape)}")
        if prev_volume is not None:
            ps = prev_volume.shape
            if (prev_volume.dim() != 5 or ps[0] != B or ps[1] != 1
                    or not (ps[2] == ps[3] == ps[4])):
                raise ValueError(f"{self.name}: prev_volume must be [B, 1, s, s, s] with B={B}, "
                                 f"got {list(ps)}")

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, xrays: torch.Tensor,
                prev_volume: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_inputs(x_t, t, xrays, prev_volume)
        S, p = self.size, self.stage.patch
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
            if self.stage.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, cond, xtokens, use_reentrant=False)
            else:
                tokens = block(tokens, cond, xtokens)
        out = self.final(tokens, cond)
        return unpatchify3d(out, p, 1, self.stage.grid)
