"""Gaussian diffusion maths for the X-ray -> CT cascade (v-parameterisation).

Pure functions plus one small schedule object that holds tensors. Nothing here owns parameters,
logs, or does I/O.

Conventions
-----------
* ``T`` discrete steps, integer timesteps ``t`` in ``[0, T)`` (a ``LongTensor`` of shape ``[B]``).
* Cosine schedule (Nichol & Dhariwal 2021)::

      f(u)     = cos^2(((u / T) + s) / (1 + s) * pi / 2),     s = 0.008
      abar(u)  = f(u) / f(0)                                   (continuous, u in [0, T])
      beta_t   = min(1 - abar(t + 1) / abar(t), max_beta)      t = 0 .. T-1, max_beta = 0.999
      alphas_cumprod[t] = prod_{j <= t} (1 - beta_j)

  i.e. timestep index ``t`` is the *end* of the ``t``-th step, so ``alphas_cumprod[0] =
  abar(1) ~ 0.99996`` (≈ 1) and the stored ``alphas_cumprod`` is **recomputed from the cumprod of
  the clipped betas** (clipping only touches the last step(s), where ``abar(T) = 0`` would give
  ``beta = 1``; it keeps ``alphas_cumprod[T-1] > 0`` so every quantity stays finite).
* Forward process  ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``.
* v target         ``v   = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``.
* Inverses         ``x0  = sqrt(abar_t) x_t - sqrt(1 - abar_t) v``,
                   ``eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v``.

Schedule tensors are stored in float64; values gathered for a batch are cast to the dtype of the
tensor they multiply (so float64 inputs give float64-exact identities, and fp32 / autocast work).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

__all__ = [
    "CosineSchedule",
    "cosine_alphas_cumprod",
    "q_sample",
    "v_target",
    "x0_from_v",
    "eps_from_v",
    "sample_timesteps",
    "ddim_timesteps",
    "ddim_sample",
]


def cosine_alphas_cumprod(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999):
    """Return ``(betas, alphas_cumprod)`` (float64, shape ``[T]``) of the clipped cosine schedule."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta}")
    u = torch.arange(num_steps + 1, dtype=torch.float64)
    f = torch.cos(((u / num_steps) + s) / (1.0 + s) * (math.pi / 2.0)) ** 2
    abar = f / f[0]
    betas = (1.0 - abar[1:] / abar[:-1]).clamp(min=0.0, max=max_beta)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return betas, alphas_cumprod


class CosineSchedule:
    """Cosine noise schedule holding its tensors (float64) on one device.

    Attributes: ``num_steps`` (T), ``betas``, ``alphas_cumprod``, ``sqrt_alphas_cumprod``,
    ``sqrt_one_minus_alphas_cumprod`` — all ``[T]`` float64 tensors.
    ``schedule.to(device)`` returns a copy on ``device`` (cheap: 4 vectors of length T).
    """

    def __init__(self, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999,
                 device: Optional[torch.device | str] = None):
        self.num_steps = int(num_steps)
        self.s = float(s)
        self.max_beta = float(max_beta)
        betas, ac = cosine_alphas_cumprod(self.num_steps, self.s, self.max_beta)
        self._set(betas, ac, device)

    def _set(self, betas, ac, device):
        self.betas = betas.to(device) if device is not None else betas
        self.alphas_cumprod = ac.to(self.betas.device)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device) -> "CosineSchedule":
        new = object.__new__(CosineSchedule)
        new.num_steps, new.s, new.max_beta = self.num_steps, self.s, self.max_beta
        new._set(self.betas, self.alphas_cumprod, torch.device(device))
        return new

    def __repr__(self) -> str:
        return (f"CosineSchedule(num_steps={self.num_steps}, s={self.s}, "
                f"max_beta={self.max_beta}, device={self.device})")

    # -- gathers ---------------------------------------------------------------------------------
    def coefficients(self, t: torch.Tensor, like: torch.Tensor):
        """``(sqrt(abar_t), sqrt(1 - abar_t))`` for a ``[B]`` timestep tensor, shaped to broadcast
        against ``like`` (``[B, 1, 1, ...]``) and cast to ``like``'s dtype/device."""
        if t.dim() != 1 or t.shape[0] != like.shape[0]:
            raise ValueError(f"t must have shape [B]={[like.shape[0]]}, got {list(t.shape)}")
        idx = t.to(device=self.device, dtype=torch.long)
        shape = (like.shape[0],) + (1,) * (like.dim() - 1)
        a = self.sqrt_alphas_cumprod[idx].to(device=like.device, dtype=like.dtype).view(shape)
        b = self.sqrt_one_minus_alphas_cumprod[idx].to(device=like.device, dtype=like.dtype).view(shape)
        return a, b

    # Method aliases of the module-level functions.
    def q_sample(self, x0, t, noise):
        return q_sample(x0, t, noise, self)

    def v_target(self, x0, t, noise):
        return v_target(x0, t, noise, self)

    def x0_from_v(self, x_t, t, v):
        return x0_from_v(x_t, t, v, self)

    def eps_from_v(self, x_t, t, v):
        return eps_from_v(x_t, t, v, self)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             schedule: CosineSchedule) -> torch.Tensor:
    """``x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise``."""
    a, b = schedule.coefficients(t, x0)
    return a * x0 + b * noise


def v_target(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             schedule: CosineSchedule) -> torch.Tensor:
    """``v = sqrt(abar_t) * noise - sqrt(1 - abar_t) * x0``."""
    a, b = schedule.coefficients(t, x0)
    return a * noise - b * x0


def x0_from_v(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor,
              schedule: CosineSchedule) -> torch.Tensor:
    """``x0 = sqrt(abar_t) * x_t - sqrt(1 - abar_t) * v``."""
    a, b = schedule.coefficients(t, x_t)
    return a * x_t - b * v


def eps_from_v(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor,
               schedule: CosineSchedule) -> torch.Tensor:
    """``eps = sqrt(1 - abar_t) * x_t + sqrt(abar_t) * v``."""
    a, b = schedule.coefficients(t, x_t)
    return b * x_t + a * v


def sample_timesteps(batch: int, schedule: CosineSchedule, device=None,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform integer timesteps in ``[0, T)``, shape ``[batch]`` (long).

    ``generator`` must live on ``device`` (torch's rule for ``torch.randint``)."""
    return torch.randint(0, schedule.num_steps, (batch,), device=device, generator=generator)


def ddim_timesteps(num_steps: int, sample_steps: int) -> list[int]:
    """Evenly spaced, strictly decreasing timesteps from ``T-1`` down to ``0`` (``sample_steps``
    of them, duplicates removed)."""
    if sample_steps < 1:
        raise ValueError(f"steps must be >= 1, got {sample_steps}")
    sample_steps = min(sample_steps, num_steps)
    if sample_steps == 1:
        return [num_steps - 1]
    ts = [round((num_steps - 1) * (1 - i / (sample_steps - 1))) for i in range(sample_steps)]
    out: list[int] = []
    for t in ts:
        if not out or t < out[-1]:
            out.append(int(t))
    return out


@torch.no_grad()
def ddim_sample(model_fn: Callable[..., torch.Tensor], shape, steps: int,
                schedule: CosineSchedule, generator: Optional[torch.Generator] = None,
                *, device=None, dtype: torch.dtype = torch.float32, eta: float = 0.0,
                x_T: Optional[torch.Tensor] = None,
                clip_x0: Optional[tuple[float, float]] = None, **cond) -> torch.Tensor:
    """DDIM sampler for a v-prediction model; returns the final ``x0`` estimate.

    ``model_fn(x_t, t, **cond) -> v`` with ``t`` a ``[B]`` long tensor. Starts from ``x_T``
    (or standard noise drawn with ``generator`` on ``device``) at ``t = T-1`` and takes
    ``steps`` DDIM steps down to ``t = 0``; the last step jumps to ``abar = 1`` (returns x̂0).
    ``eta = 0`` (default) is deterministic; ``eta > 0`` adds DDPM-like noise.
    ``clip_x0=(lo, hi)`` clamps each x̂0 estimate (e.g. to the data range).
    """
    if device is None:
        device = x_T.device if x_T is not None else schedule.device
    x = (torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
         if x_T is None else x_T.to(device=device, dtype=dtype))
    B = x.shape[0]
    ts = ddim_timesteps(schedule.num_steps, steps)
    ac = schedule.alphas_cumprod
    x0 = x
    for i, t_cur in enumerate(ts):
        t = torch.full((B,), t_cur, device=device, dtype=torch.long)
        v = model_fn(x, t, **cond).to(dtype)
        x0 = x0_from_v(x, t, v, schedule)
        if clip_x0 is not None:
            x0 = x0.clamp(*clip_x0)
            a, b = schedule.coefficients(t, x)
            eps = (x - a * x0) / b  # keep (x0, eps) consistent with x_t after clipping
        else:
            eps = eps_from_v(x, t, v, schedule)
        if i + 1 == len(ts):
            break
        a_t = float(ac[t_cur])
        a_prev = float(ac[ts[i + 1]])
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) if eta > 0 else 0.0
        dir_coef = math.sqrt(max(1.0 - a_prev - sigma ** 2, 0.0))
        x = math.sqrt(a_prev) * x0 + dir_coef * eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=device, dtype=dtype)
    return x0
