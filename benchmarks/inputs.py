"""Inputs and baselines shared by the benchmark modules."""
from __future__ import annotations

import math

import torch


def image_pair(shape, device: torch.device | str = "cpu", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) images in [0, 1]: target = prediction + 10 % noise, clamped."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    y = (x + 0.1 * torch.randn(shape, generator=g)).clamp(0, 1)
    return x.to(device), y.to(device)


def log_uniform_groups(total: int, device: torch.device | str = "cpu") -> dict[str, list[torch.Tensor]]:
    """250 gradient-like tensors of log-uniform sizes (seeded) adding up to ~`total` elements, in 3 groups."""
    g = torch.Generator().manual_seed(1)
    w = torch.exp(torch.rand(250, generator=g) * math.log(1e4))
    ts = [torch.randn(int(s), device=device) for s in (w / w.sum() * total).long().clamp_(min=1).tolist()]
    return {"decoder": ts[:200], "rgb_head": ts[200:215], "clip_head": ts[215:]}


def foreach_norms(groups: dict[str, list[torch.Tensor | None]]) -> torch.Tensor:
    """The unfused baseline of grouped_grad_norms: torch._foreach_norm per group, then stacking."""
    per = torch.stack([torch.linalg.vector_norm(torch.stack(torch._foreach_norm([t for t in ts if t is not None])))
                       for ts in groups.values()])
    return torch.cat([torch.linalg.vector_norm(per).reshape(1), per])
