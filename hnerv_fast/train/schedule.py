"""Learning-rate schedules as multipliers of the base lr: of training progress (cosine) or of the validation
loss seen so far (plateau)."""
from __future__ import annotations

import math


def cosine_multiplier(progress: float, up_ratio: float, up_pow: float, min_lr: float) -> float:
    """HNeRV's `cosine_<up_ratio>_<up_pow>_<min_lr>` on the epoch fraction p in [0, 1]:
    warm-up (p < up_ratio): min_lr + (1 - min_lr)·(p/up_ratio)^up_pow; then 0.5·(1 + cos(π·(p - up)/(1 - up)))."""
    if progress < up_ratio:
        return min_lr + (1.0 - min_lr) * (progress / up_ratio) ** up_pow
    return 0.5 * (1.0 + math.cos(math.pi * (progress - up_ratio) / (1.0 - up_ratio)))


class PlateauSchedule:
    """ReduceLROnPlateau's rule (mode min, relative threshold 1e-4, no cooldown) as a multiplier: after more
    than `patience` epochs without a new best validation loss, multiply by `factor` and count again."""

    THRESHOLD = 1e-4

    def __init__(self, factor: float, patience: int):
        self.factor, self.patience = factor, patience
        self.multiplier, self.best, self.bad_epochs = 1.0, math.inf, 0

    def step(self, val_loss: float) -> None:
        if val_loss < self.best * (1.0 - self.THRESHOLD):
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.multiplier *= self.factor
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"multiplier": self.multiplier, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.multiplier, self.best, self.bad_epochs = state["multiplier"], state["best"], state["bad_epochs"]
