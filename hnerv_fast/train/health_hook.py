"""The monitoring guide's warning signs, checked while training (on the logger's writer thread)."""
from __future__ import annotations

from hnerv_fast.health_rules import HealthMonitor, HealthThresholds


class HealthReporter:
    """Call with (writer, step, {tag: float}) from an `add_scalars` callback: each new warning is printed
    once, when it first appears, and logged as TensorBoard text under `Health/warnings`."""

    TAG = "Health/warnings"

    def __init__(self, thresholds: HealthThresholds):
        self.monitor = HealthMonitor(thresholds)

    def __call__(self, writer, step: int, values: dict[str, float]) -> None:
        from tqdm import tqdm

        lines = self.monitor.update(step, values)
        for line in lines:
            tqdm.write(line)
        if lines:
            writer.add_text(self.TAG, "\n".join(f"- {line}" for line in lines), step)
