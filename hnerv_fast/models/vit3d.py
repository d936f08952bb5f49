"""3D ViT building blocks for the cascade: timestep embedding, 3D patchify / unpatchify,
adaptive-LayerNorm (AdaLN) transformer block with optional cross-attention, AdaLN output layer.

All modules are plain ``nn.Module``s; attention is :func:`attention` (``F.scaled_dot_product_attention``,
or two matmuls for bf16 on a CPU under torch.compile).

AdaLN: a conditioning vector ``c [B, cond_dim]`` is mapped (SiLU -> Linear) to per-channel
``shift, scale, gate`` triples; each sub-layer computes
``x + (1 + gate) * f(LN(x) * (1 + scale) + shift)`` with an affine-free LayerNorm. The modulation
layers start small (std 0.02) instead of at zero (adaLN-Zero), and the gate is offset by one, so
every parameter receives gradient from the first step (a zero gate would block the branch).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "timestep_embedding",
    "TimestepEmbedder",
    "patchify3d",
    "unpatchify3d",
    "attention",
    "matmul_attention",
    "Attention",
    "Mlp",
    "AdaLNBlock",
    "AdaLNFinalLayer",
]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (integer or real) timesteps ``t [B]`` -> ``[B, dim]`` (float32).

    ``[cos(t * f_0), ..., cos(t * f_{h-1}), sin(t * f_0), ..., sin(t * f_{h-1})]`` with
    ``f_i = max_period ** (-i / h)``, ``h = dim // 2``; a zero column is appended for odd ``dim``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoidal features -> 2-layer MLP -> ``[B, dim]``."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


def patchify3d(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, C, D, H, W]`` -> tokens ``[B, (D/p)(H/p)(W/p), C*p^3]``.

    Token order is raster over the patch grid ``(gd, gh, gw)``; each token's features are ordered
    ``(c, pd, ph, pw)``. Exactly inverted by :func:`unpatchify3d`.
    """
    B, C, D, H, W = x.shape
    p = patch
    if D % p or H % p or W % p:
        raise ValueError(f"volume {list(x.shape[2:])} is not divisible by patch size {p}")
    x = x.reshape(B, C, D // p, p, H // p, p, W // p, p)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # B, gd, gh, gw, C, pd, ph, pw
    return x.reshape(B, (D // p) * (H // p) * (W // p), C * p ** 3)


def unpatchify3d(tokens: torch.Tensor, patch: int, channels: int, grid) -> torch.Tensor:
    """Inverse of :func:`patchify3d`: ``[B, N, C*p^3]`` -> ``[B, C, gd*p, gh*p, gw*p]``.

    ``grid`` is ``(gd, gh, gw)`` or an int for a cubic grid."""
    if isinstance(grid, int):
        grid = (grid, grid, grid)
    gd, gh, gw = grid
    B, N, F_ = tokens.shape
    p = patch
    if N != gd * gh * gw or F_ != channels * p ** 3:
        raise ValueError(f"tokens {list(tokens.shape)} do not match grid {tuple(grid)}, "
                         f"patch {p}, channels {channels}")
    x = tokens.reshape(B, gd, gh, gw, channels, p, p, p)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # B, C, gd, pd, gh, ph, gw, pw
    return x.reshape(B, channels, gd * p, gh * p, gw * p)


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` as two matmuls in the inputs' dtype, the softmax in at least float32."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    weights = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    return weights.to(q.dtype) @ v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention of ``[B, heads, N, d]`` tensors.

    bf16 on the CPU under torch.compile: :func:`matmul_attention`, whose bf16 matmuls run on the CPU's
    native bf16 units while inductor fuses the float32 softmax with its casts (a stage_32 step: 27 ms
    against 34 ms with flash attention, benchmarks/RESULTS.md). Everywhere else (eager, where the unfused
    softmax costs what the matmuls save; float32; GPU) ``F.scaled_dot_product_attention``.
    """
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and torch.compiler.is_compiling():
        return matmul_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head attention (self-attention when ``context`` is None, else cross-attention)."""

    def __init__(self, dim: int, num_heads: int, context_dim: Optional[int] = None,
                 qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, C = x.shape
        ctx = x if context is None else context
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(ctx).reshape(B, ctx.shape[1], 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class AdaLNBlock(nn.Module):
    """Transformer block with adaptive LayerNorm conditioned on ``cond [B, cond_dim]``.

    ``forward(x [B, N, dim], cond [B, cond_dim], context [B, M, context_dim] | None)``.
    With ``cross_attention=True`` a third (AdaLN-modulated) sub-layer attends from the volume
    tokens to ``context`` (the X-ray tokens); ``context`` is then required.
    """

    def __init__(self, dim: int, num_heads: int, cond_dim: int, mlp_ratio: float = 4.0,
                 cross_attention: bool = False, context_dim: Optional[int] = None):
        super().__init__()
        self.cross_attention = cross_attention
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        n_mod = 6
        if cross_attention:
            self.norm_x = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.xattn = Attention(dim, num_heads, context_dim=context_dim or dim)
            n_mod = 9
        self.n_mod = n_mod
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, n_mod * dim))
        nn.init.normal_(self.adaLN[1].weight, std=0.02)
        nn.init.zeros_(self.adaLN[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor,
                context: Optional[torch.Tensor] = None) -> torch.Tensor:
        mods = self.adaLN(cond).chunk(self.n_mod, dim=-1)
        # gates are 1 + g so the residual branches are active from initialisation
        sh1, sc1, g1, sh2, sc2, g2 = mods[:6]
        x = x + (1 + g1.unsqueeze(1)) * self.attn(_modulate(self.norm1(x), sh1, sc1))
        if self.cross_attention:
            if context is None:
                raise ValueError("this block has cross_attention=True but no context was given")
            sh3, sc3, g3 = mods[6:]
            x = x + (1 + g3.unsqueeze(1)) * self.xattn(_modulate(self.norm_x(x), sh3, sc3),
                                                       context)
        x = x + (1 + g2.unsqueeze(1)) * self.mlp(_modulate(self.norm2(x), sh2, sc2))
        return x


class AdaLNFinalLayer(nn.Module):
    """AdaLN-modulated LayerNorm followed by a linear map to ``out_dim`` (per token)."""

    def __init__(self, dim: int, cond_dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)
        nn.init.normal_(self.adaLN[1].weight, std=0.02)
        nn.init.zeros_(self.adaLN[1].bias)
        nn.init.normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(cond).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm(x), shift, scale))
