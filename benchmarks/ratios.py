"""Collects benchmark times (best of the rounds) per group and prints fast-vs-reference ratios at the end of the run.

Each benchmark calls `record_ratio(group, label, benchmark)`; the first label recorded in a group is
the baseline, and `benchmarks/conftest.py` prints every other label's speed-up against it.
"""
from __future__ import annotations

from collections import defaultdict

MEDIANS: dict[str, dict[str, float]] = defaultdict(dict)


def record_ratio(group: str, label: str, benchmark, stat: str = "min") -> None:
    """`stat`: "min" (default: robust to other load on a shared machine) or "median" (where the load is
    the point of the benchmark: the min hides the slow calls)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: nothing was timed
        return
    MEDIANS[group][label] = getattr(stats.stats, stat)


def record_seconds(group: str, label: str, seconds: float) -> None:
    """A time measured outside pytest-benchmark (e.g. the epoch times another program prints)."""
    MEDIANS[group][label] = seconds


def report() -> str:
    lines = []
    for group, medians in MEDIANS.items():
        if not medians:
            continue
        base_label, base = next(iter(medians.items()))
        lines.append(f"[{group}] baseline {base_label}: {base * 1e3:.3f} ms")
        for label, median in list(medians.items())[1:]:
            lines.append(f"[{group}]   {label}: {median * 1e3:.3f} ms  ->  {base / median:.2f}x vs baseline")
    return "\n".join(lines)
