"""Collects benchmark times (best of the rounds) per group and prints fast-vs-reference ratios at the end of the run.

Each benchmark calls `record_ratio(group, label, benchmark)`; the first label recorded in a group is
the baseline, and `benchmarks/conftest.py` prints every other label's speed-up against it. Each line is also
printed when its time is recorded (seen with `pytest -s`), so a run killed part-way (gpu-check's time budget)
still shows the times it took.
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
    record_seconds(group, label, getattr(stats.stats, stat))


def record_seconds(group: str, label: str, seconds: float) -> None:
    """A time measured outside pytest-benchmark (e.g. the epoch times another program prints)."""
    MEDIANS[group][label] = seconds
    print(f"\n{_line(group, label)}", flush=True)


def _line(group: str, label: str) -> str:
    (base_label, base), seconds = next(iter(MEDIANS[group].items())), MEDIANS[group][label]
    if label == base_label:
        return f"[{group}] baseline {base_label}: {base * 1e3:.3f} ms"
    return f"[{group}]   {label}: {seconds * 1e3:.3f} ms  ->  {base / seconds:.2f}x vs baseline"


def report() -> str:
    return "\n".join(_line(group, label) for group, times in MEDIANS.items() for label in times)
