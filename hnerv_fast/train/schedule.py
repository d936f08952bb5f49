"""Learning-rate schedules as multipliers of the base lr (pure functions of training progress)."""
from __future__ import annotations

import math


def cosine_multiplier(progress: float, up_ratio: float, up_pow: float, min_lr: float) -> float:
    """HNeRV's `cosine_<up_ratio>_<up_pow>_<min_lr>` on the epoch fraction p in [0, 1]:
    warm-up (p < up_ratio): min_lr + (1 - min_lr)·(p/up_ratio)^up_pow; then 0.5·(1 + cos(π·(p - up)/(1 - up)))."""
    if progress < up_ratio:
        return min_lr + (1.0 - min_lr) * (progress / up_ratio) ** up_pow
    return 0.5 * (1.0 + math.cos(math.pi * (progress - up_ratio) / (1.0 - up_ratio)))
