"""Training-health report from TensorBoard event files.

    python -m hnerv_fast.health LOGDIR [--all] [--set max_psnr_gap=6 ...]

Every directory under LOGDIR holding event files is a run. For each run a table lists the monitored
metrics: last value, trend (least-squares slope sign over the last points), status (ok / watch / WARNING
and why). The rules and their thresholds are in `hnerv_fast.health_rules` (`HealthThresholds`).

Exit code: 0 healthy, 1 at least one warning, 2 LOGDIR missing / unreadable / holding no scalars.

In a trainer use `HealthMonitor` (same rules, streaming, reports each warning once).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hnerv_fast.health_rules import (
    OSCILLATION_TAGS, PSNR_GAP, VAL_CLIP_SIM, HealthMonitor, HealthThresholds, HealthWarning, check_scalars,
    trend, watch_note,
)
from hnerv_fast.logging.layouts import CascadeTags, DualTags

__all__ = ["HealthMonitor", "HealthThresholds", "HealthWarning", "LogdirError", "RunReport", "check_logdir",
           "check_scalars", "find_runs", "format_report", "read_scalars", "main"]

# Table rows (when present in the run), in this order; tags with a warning are always shown.
_DUAL_KEY = (DualTags.TRAIN_PSNR, "Eval/Frame/val_psnr", DualTags.TOTAL_LOSS, DualTags.PIXEL_LOSS,
             DualTags.CLIP_LOSS, DualTags.CLIP_LOSS_WEIGHTED, DualTags.PIXEL_TO_CLIP, DualTags.CLIP_ACTIVE,
             DualTags.LR, DualTags.GRAD_TOTAL, DualTags.GRAD_RGB_TO_CLIP, PSNR_GAP, DualTags.GAP[1],
             VAL_CLIP_SIM, "Eval/PSNR_Stats/val_std", "Eval/Patch/val_psnr_std")
_CASCADE_KEY = ("train_loss", "val_loss", "train_diffusion", "train_physics", "val_diffusion", "val_physics",
                "epoch_time", "learning_rate", *CascadeTags.SAMPLE_QUALITY)
assert set(_DUAL_KEY) <= set(DualTags.SCALARS)
assert set(_CASCADE_KEY) <= set(CascadeTags.EPOCH + CascadeTags.SAMPLE_QUALITY)
assert set(OSCILLATION_TAGS) <= set(DualTags.SCALARS)


class LogdirError(RuntimeError):
    """The log directory is missing, unreadable or holds no scalar data (exit code 2)."""


@dataclass
class RunReport:
    name: str
    path: Path
    series: dict[str, list[tuple[int, float]]]
    warnings: list[HealthWarning] = field(default_factory=list)


def find_runs(logdir: str | os.PathLike) -> list[Path]:
    """Directories under `logdir` (itself included) that hold TensorBoard event files, sorted."""
    root = Path(logdir)
    if not root.exists():
        raise LogdirError(f"log directory {str(root)!r} does not exist")
    if not root.is_dir():
        raise LogdirError(f"{str(root)!r} is not a directory")
    runs = []
    try:
        for directory, _, files in os.walk(root, onerror=_raise):
            if any(".tfevents." in name or name.startswith("events.out.tfevents") for name in files):
                runs.append(Path(directory))
    except OSError as exc:
        raise LogdirError(f"cannot read {str(root)!r}: {exc}") from exc
    return sorted(runs)


def _raise(exc: OSError) -> None:
    raise exc


def read_scalars(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of one run (steps sorted; a repeated step keeps the last value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    guidance = {"scalars": 0, "images": 1, "histograms": 1, "compressedHistograms": 1, "tensors": 1, "audio": 1}
    acc = EventAccumulator(str(run_dir), size_guidance=guidance)
    try:
        acc.Reload()
    except Exception as exc:  # corrupt / unreadable event file
        raise LogdirError(f"cannot read event files in {str(run_dir)!r}: {exc}") from exc
    series = {}
    for tag in acc.Tags().get("scalars", []):
        by_step: dict[int, float] = {}
        for event in acc.Scalars(tag):
            by_step[int(event.step)] = float(event.value)
        series[tag] = sorted(by_step.items())
    return series


def check_logdir(path: str | os.PathLike, thresholds: HealthThresholds | None = None) -> list[RunReport]:
    """Read every run under `path` and check it. Raises `LogdirError` when there is nothing to check."""
    root = Path(path)
    runs = find_runs(root)
    if not runs:
        raise LogdirError(f"no TensorBoard event files under {str(root)!r}")
    reports = []
    for run in runs:
        series = read_scalars(run)
        name = str(run.relative_to(root)) if run != root else "."
        reports.append(RunReport(name, run, series, check_scalars(series, thresholds)))
    if not any(r.series for r in reports):
        raise LogdirError(f"event files under {str(root)!r} hold no scalars "
                          f"({len(runs)} run{'s' if len(runs) != 1 else ''} found)")
    return reports


def _rows(report: RunReport, show_all: bool) -> list[str]:
    series = report.series
    if show_all:
        return sorted(series)
    stages = sorted({tag.split("/", 1)[0] for tag in series
                     if tag.count("/") == 1 and tag.split("/", 1)[1] in CascadeTags.EPOCH
                     and not tag.startswith(("Train/", "Eval/"))})
    rows = [tag for tag in _DUAL_KEY if tag in series]
    rows += [CascadeTags.tag(s, n) for s in stages for n in _CASCADE_KEY if CascadeTags.tag(s, n) in series]
    rows += [w.tag for w in report.warnings if w.tag not in rows]
    return list(dict.fromkeys(rows))


def _value(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def format_report(report: RunReport, thresholds: HealthThresholds | None = None, show_all: bool = False) -> str:
    t = thresholds or HealthThresholds()
    if not report.series:
        return f"run {report.name}: no scalars\n"
    by_tag: dict[str, list[HealthWarning]] = {}
    for w in report.warnings:
        by_tag.setdefault(w.tag, []).append(w)
    table = [("metric", "last", "trend", "status")]
    for tag in _rows(report, show_all):
        points = report.series.get(tag, [])
        last = f"{_value(points[-1][1])} @{points[-1][0]}" if points else "-"
        if tag in by_tag:
            status = "WARNING: " + "; ".join(
                w.message + (f" (step {w.step})" if w.step is not None else "") for w in by_tag[tag])
        else:
            note = watch_note(tag, report.series, t)
            status = f"watch: {note}" if note else "ok"
        table.append((tag, last, trend(points, t), status))
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = [f"run {report.name}  ({len(report.series)} scalar tags, "
             f"{len(report.warnings)} warning{'s' if len(report.warnings) != 1 else ''})"]
    for i, row in enumerate(table):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
        if i == 0:
            lines.append("-" * (sum(widths) + 6 + len("status")))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hnerv_fast.health",
                                     description="Training-health report from TensorBoard event files.",
                                     epilog="exit code: 0 healthy, 1 warnings, 2 unreadable or empty logdir")
    parser.add_argument("logdir", help="a run directory or a directory of runs")
    parser.add_argument("--all", action="store_true", help="list every scalar tag, not only the monitored ones")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="override a HealthThresholds field, e.g. --set max_psnr_gap=6 (repeatable)")
    args = parser.parse_args(argv)
    try:
        thresholds = HealthThresholds.from_overrides(args.overrides)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        reports = check_logdir(args.logdir, thresholds)
    except LogdirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for report in reports:
        print(format_report(report, thresholds, args.all))
    total = sum(len(r.warnings) for r in reports)
    if total:
        print(f"{total} warning{'s' if total != 1 else ''} in "
              f"{sum(1 for r in reports if r.warnings)} of {len(reports)} run(s)")
        return 1
    print(f"healthy: no warnings in {len(reports)} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
