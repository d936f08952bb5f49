"""The `health` section: thresholds of the training-health rules (hnerv_fast/health_rules.py applies them).

It lives with the config so that loading a config needs no rule code (which imports the tag layouts).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable, Mapping


@dataclass
class HealthThresholds:
    """All health thresholds (defaults from the monitoring guides). Plain fields: embeddable in a config."""

    # dual HNeRV ("Warning Signs")
    max_psnr_gap: float = 5.0              # dB, Eval/Gap/psnr_gap
    min_grad_norm: float = 0.001           # Train/Gradients/total_norm
    max_grad_norm: float = 100.0
    max_rgb_to_clip_ratio: float = 10.0    # Train/Gradients/rgb_to_clip_ratio, once clip_loss_active == 1
    min_rgb_to_clip_ratio: float = 0.1
    # ...but RGB dominance is no warning once Train/Loss/clip_loss fell below this fraction of its first value
    # after the warmup: the CLIP head is learning (a head that fits its targets needs little gradient)
    clip_loss_learning_fraction: float = 0.5
    min_val_clip_sim: float = 0.7          # Eval/Frame/val_clip_sim after the warmup
    # oscillating loss
    oscillation_window: int = 10           # last N points
    oscillation_sign_changes: float = 0.5  # fraction of consecutive differences that flip sign, above
    oscillation_amplitude: float = 0.1     # mean |difference| / mean |loss|, above
    # cascade
    diffusion_physics_factor: float = 100.0  # train_diffusion / train_physics outside [1/f, f]
    val_loss_rising_epochs: int = 3
    epoch_time_drift: float = 0.2
    epoch_time_drift_min_s: float = 1.0    # and at least this much slower: sub-second epochs jitter by 20 %+
    epoch_time_baseline_epochs: int = 3
    epoch_time_recent_epochs: int = 1
    # report only: trend column and "watch" notes (the guide's "Healthy Training" ranges)
    trend_points: int = 5
    trend_flat: float = 0.01               # |relative change over the trend points| below this: flat
    healthy_psnr_gap: float = 3.0
    healthy_grad_norm_min: float = 0.1
    healthy_grad_norm_max: float = 10.0
    healthy_val_clip_sim: float = 0.85

    def __post_init__(self) -> None:
        if self.oscillation_window < 3:
            raise ValueError("oscillation_window must be >= 3")
        for name in ("val_loss_rising_epochs", "epoch_time_baseline_epochs", "epoch_time_recent_epochs",
                     "trend_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.diffusion_physics_factor <= 1:
            raise ValueError("diffusion_physics_factor must be > 1")

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, object] | Iterable[str] = ()) -> "HealthThresholds":
        """From {field: value} or ["field=value", ...] (strings are converted to the field's type)."""
        if not isinstance(overrides, Mapping):
            pairs = {}
            for item in overrides:
                key, sep, value = str(item).partition("=")
                if not sep:
                    raise ValueError(f"threshold override {item!r}: expected NAME=VALUE")
                pairs[key.strip()] = value.strip()
            overrides = pairs
        types = {f.name: f.type for f in fields(cls)}
        kwargs = {}
        for key, value in overrides.items():
            if key not in types:
                raise ValueError(f"unknown health threshold {key!r}; known: {', '.join(types)}")
            kind = int if types[key] in (int, "int") else float
            try:
                kwargs[key] = kind(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"health threshold {key}={value!r}: not a {kind.__name__}") from exc
        return cls(**kwargs)
