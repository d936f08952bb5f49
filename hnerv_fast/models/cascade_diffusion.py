"""A cascade stage's diffusion: training loss and DDIM sampling (pure functions of a stage model).

Training objective (:func:`diffusion_and_physics_loss`)::

    total = MSE(v_pred, v_target) + physics_weight * mean_views MSE(DRR(relu(x̂0)), xray)

The diffusion runs directly on attenuation values (the phantoms are in ``[0, 1]``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from hnerv_fast.models.cascade import CascadeStage
from hnerv_fast.models.diffusion import (CosineSchedule, ddim_sample, q_sample, sample_timesteps,
                                         v_target, x0_from_v)
from hnerv_fast.models.drr import physics_loss

__all__ = ["diffusion_and_physics_loss", "sample_stage", "sample_cascade"]


def diffusion_and_physics_loss(stage_model: CascadeStage, schedule: CosineSchedule,
                               x0: torch.Tensor, xrays: torch.Tensor,
                               views: Optional[Sequence[str]], prev: Optional[torch.Tensor],
                               physics_weight: float, generator: Optional[torch.Generator] = None,
                               *, t: Optional[torch.Tensor] = None,
                               noise: Optional[torch.Tensor] = None, physics_at: str = "xray"):
    """One training/validation loss evaluation for a stage.

    Draws ``t ~ U{0..T-1}`` and ``noise ~ N(0, I)`` (with ``generator``, which must live on
    ``x0.device``) unless given, forms ``x_t = q_sample(x0, t, noise)``, predicts ``v`` and returns
    ``(total, diffusion, physics)`` (0-dim tensors; no host sync):

    * ``diffusion = MSE(v_pred, v_target(x0, t, noise))``
    * ``physics = mean_views MSE(DRR(relu(x̂0)), xray)`` with ``x̂0 = x0_from_v(x_t, t, v_pred)``
    * ``total = diffusion + physics_weight * physics``

    ``views`` defaults to (and must equal) ``stage_model.views``. ``schedule`` must be on
    ``x0.device`` (``schedule.to(device)``). ``physics_at`` is passed to
    :func:`hnerv_fast.models.drr.physics_loss` as ``at`` ("xray": DRR resized to the X-ray size,
    the published behaviour; "volume": compare at the DRR's native size when it is smaller).
    """
    views = stage_model.views if views is None else tuple(views)
    if views != stage_model.views:
        raise ValueError(f"{stage_model.name}: views {views} differ from the stage's views {stage_model.views}")
    B = x0.shape[0]
    if t is None:
        t = sample_timesteps(B, schedule, device=x0.device, generator=generator)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = q_sample(x0, t, noise, schedule)
    v_pred = stage_model(x_t, t, xrays, prev)
    v_true = v_target(x0, t, noise, schedule)
    diffusion = F.mse_loss(v_pred.float(), v_true.float())
    x0_hat = x0_from_v(x_t.float(), t, v_pred.float(), schedule)
    physics = physics_loss(x0_hat, xrays, views, at=physics_at)
    total = diffusion + physics_weight * physics
    return total, diffusion, physics


@torch.no_grad()
def sample_stage(stage_model: CascadeStage, schedule: CosineSchedule, xrays: torch.Tensor,
                 prev: Optional[torch.Tensor] = None, steps: int = 20,
                 generator: Optional[torch.Generator] = None,
                 clip_x0: Optional[tuple] = (0.0, 1.0),
                 *, x_T: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DDIM-sample one stage's volume ``[B, 1, S, S, S]`` from its X-rays (and previous volume).

    Starts from ``x_T`` when given (the trainer's seeded noise), else from noise drawn with
    ``generator``. ``clip_x0`` clamps the intermediate x̂0 estimates to the data range (``None``
    disables)."""
    S = stage_model.size
    shape = (xrays.shape[0], 1, S, S, S)
    return ddim_sample(lambda x, t: stage_model(x, t, xrays, prev), shape, steps, schedule,
                       generator, device=xrays.device, dtype=xrays.dtype, x_T=x_T, clip_x0=clip_x0)


@torch.no_grad()
def sample_cascade(stages: Sequence[CascadeStage], schedule: CosineSchedule, xrays: torch.Tensor,
                   steps: int = 20, generator: Optional[torch.Generator] = None,
                   clip_x0: Optional[tuple] = (0.0, 1.0)) -> list[torch.Tensor]:
    """Run the stages coarse to fine, each conditioned on the previous one's sample.
    Returns the list of per-stage volumes."""
    out, prev = [], None
    for stage in stages:
        prev = sample_stage(stage, schedule, xrays, prev, steps, generator, clip_x0)
        out.append(prev)
    return out
