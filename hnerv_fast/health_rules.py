"""Training-health rules over TensorBoard scalars (pure Python: no TensorBoard, no torch).

The rules are the "Warning Signs" of docs/tags_dual_hnerv.md and the loss / speed
checks of docs/tags_cascade.md. Every threshold lives in `HealthThresholds` (config/health.py: a plain dataclass with
defaults, so a trainer config can embed it as a section and override single fields).

Rules (a warning kind fires once per tag, at the first step where it holds):

dual HNeRV (tags of `DualTags`)
  overfitting      Eval/Gap/psnr_gap > max_psnr_gap (5 dB)
  grad_vanishing   Train/Gradients/total_norm < min_grad_norm (0.001)
  grad_exploding   Train/Gradients/total_norm > max_grad_norm (100)
  head_imbalance   Train/Gradients/rgb_to_clip_ratio > max_rgb_to_clip_ratio (10) or
                   < min_rgb_to_clip_ratio (0.1), only at steps where Train/clip_loss_active is 1: during
                   the warmup the CLIP head gets no gradient and the ratio is logged as 0. The "> 10" side
                   only while Train/Loss/clip_loss is above clip_loss_learning_fraction (0.5) of its first
                   value after the warmup: once it fell that far the CLIP head is learning, and a head that
                   fits its targets (near-identical ones with a random-init CLIP) gets little gradient.
  poor_clip        Eval/Frame/val_clip_sim < min_val_clip_sim (0.7), only after the warmup (same flag).
  oscillation      Train/Loss/total_loss (and each cascade `{stage}/train_loss`) oscillates: over its last
                   `oscillation_window` (10) points, the successive differences d_i change sign in more
                   than `oscillation_sign_changes` (50 %) of the consecutive pairs AND their mean |d_i|
                   exceeds `oscillation_amplitude` (10 %) of the mean |loss| in the window. A noisy but
                   decreasing curve has few sign changes; a converged plateau has tiny differences.
cascade (tags `{stage}/{name}` of `CascadeTags`)
  loss_imbalance   train_diffusion / train_physics > diffusion_physics_factor (100) or < 1/factor. Both
                   are the logged, unweighted components (total = diffusion + physics_weight * physics),
                   so the ratio does not depend on physics_weight: it says whether the two raw terms
                   are within two orders of magnitude; beyond that the weight has to compensate and a
                   typical physics_weight (0.1 - 1) leaves one term negligible.
  val_loss_rising  val_loss increased `val_loss_rising_epochs` (3) epochs in a row.
  epoch_time_drift (recent - baseline) / baseline > epoch_time_drift (20 %) and recent - baseline >
                   `epoch_time_drift_min_s` (1 s): slowdowns only (a run that gets faster, e.g. once caches
                   are warm, is fine), baseline = median of the first `epoch_time_baseline_epochs` (3)
                   epoch times (robust to a slow first, compiling, epoch), recent = median of the last
                   `epoch_time_recent_epochs` (1 = the last epoch). The floor keeps short epochs (tiny
                   configs, tests: a fraction of a second, where scheduling alone moves them by 20 %+) quiet.
any tag
  nonfinite        a NaN or inf value (compares false with every threshold, so it is checked first).

"watch" notes (the guide's "Healthy Training" ranges: gap < 3 dB, gradient norm 0.1-10, val_clip_sim
> 0.85) are shown in the report's table but are not warnings and do not change the exit code.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Mapping

from hnerv_fast.config.health import HealthThresholds
from hnerv_fast.logging.layouts import CascadeTags, DualTags

PSNR_GAP = DualTags.GAP[0]  # Eval/Gap/psnr_gap
VAL_CLIP_SIM = "Eval/Frame/val_clip_sim"
assert VAL_CLIP_SIM in DualTags.FRAME
OSCILLATION_TAGS = (DualTags.TOTAL_LOSS,)  # plus every cascade {stage}/train_loss
_CASCADE_WATCHED = {"train_loss", "train_diffusion", "train_physics", "val_loss", "epoch_time"}
assert _CASCADE_WATCHED <= set(CascadeTags.EPOCH)


@dataclass(frozen=True)
class HealthWarning:
    tag: str
    message: str
    kind: str = ""           # rule id (see the module docstring)
    step: int | None = None  # first step where it held

    def __str__(self) -> str:
        where = f" (step {self.step})" if self.step is not None else ""
        return f"{self.tag}: {self.message}{where}"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _cascade_split(tag: str) -> tuple[str, str] | None:
    stage, sep, name = tag.partition("/")
    if sep and "/" not in name and name in _CASCADE_WATCHED and not stage.startswith(("Train", "Eval", "Model")):
        return stage, name
    return None


def oscillation(values: list[float], t: HealthThresholds) -> tuple[bool, float, float]:
    """(oscillating, sign-change fraction, relative amplitude) of the last `oscillation_window` values."""
    window = values[-t.oscillation_window:]
    if len(window) < t.oscillation_window:
        return False, 0.0, 0.0
    diffs = [b - a for a, b in zip(window, window[1:])]
    pairs = list(zip(diffs, diffs[1:]))
    changes = sum(1 for a, b in pairs if a * b < 0) / len(pairs)
    scale = statistics.fmean(abs(v) for v in window)
    amplitude = statistics.fmean(abs(d) for d in diffs) / scale if scale > 0 else 0.0
    return changes > t.oscillation_sign_changes and amplitude > t.oscillation_amplitude, changes, amplitude


class HealthMonitor:
    """Streaming health check. `update(step, {tag: float})` returns the NEW warnings as strings.

    Each warning kind is reported once per tag, when it first appears. Feed it every scalar batch in the
    order it is logged (epoch scalars before the eval scalars of the same epoch, as the trainers log
    them): the CLIP warmup flag of a step is taken from the latest `Train/clip_loss_active`.
    Never raises: an internal error becomes one warning string.
    """

    def __init__(self, thresholds: HealthThresholds | None = None, prefix: str = "[health] "):
        self.thresholds = thresholds or HealthThresholds()
        self.prefix = prefix
        self.warnings: list[HealthWarning] = []  # every warning so far, in order
        self._seen: set[tuple[str, str]] = set()
        self._clip_active: float | None = None
        self._first_clip_loss: float | None = None  # the first after the warmup
        keep = max(self.thresholds.oscillation_window, self.thresholds.val_loss_rising_epochs + 1,
                   self.thresholds.epoch_time_recent_epochs, 2)
        self._recent: dict[str, deque] = defaultdict(lambda: deque(maxlen=keep))
        self._first_epoch_times: dict[str, list[float]] = defaultdict(list)
        self._latest: dict[str, tuple[int, float]] = {}
        self._internal_error = False

    # ------------------------------------------------------------------------------ public
    def update(self, step: int, values: Mapping[str, float]) -> list[str]:
        return [self.prefix + str(w) for w in self.check(step, values)]

    def check(self, step: int, values: Mapping[str, float]) -> list[HealthWarning]:
        """Like `update`, returning `HealthWarning`s."""
        new: list[HealthWarning] = []
        try:
            self._check(int(step), {k: float(v) for k, v in values.items()}, new)
        except Exception as exc:  # the monitor runs on the TensorBoard writer thread: never kill it
            if not self._internal_error:
                self._internal_error = True
                new.append(HealthWarning("Health", f"health monitor error: {exc!r}", "internal", int(step)))
        self.warnings.extend(new)
        return new

    @property
    def clip_active(self) -> bool | None:
        return None if self._clip_active is None else self._clip_active >= 0.5

    # ----------------------------------------------------------------------------- rules
    def _warn(self, out: list, kind: str, tag: str, step: int, message: str) -> None:
        if (kind, tag) not in self._seen:
            self._seen.add((kind, tag))
            out.append(HealthWarning(tag, message, kind, step))

    def _check(self, step: int, values: dict[str, float], out: list) -> None:
        t = self.thresholds
        if DualTags.CLIP_ACTIVE in values and math.isfinite(values[DualTags.CLIP_ACTIVE]):
            self._clip_active = values[DualTags.CLIP_ACTIVE]
        clip_loss = values.get(DualTags.CLIP_LOSS)
        if self.clip_active and self._first_clip_loss is None and clip_loss is not None and clip_loss > 0:
            self._first_clip_loss = clip_loss
        for tag, value in values.items():
            if not math.isfinite(value):
                self._warn(out, "nonfinite", tag, step, f"non-finite value {value}")
                continue
            self._latest[tag] = (step, value)
            if tag == DualTags.GRAD_TOTAL:
                if value < t.min_grad_norm:
                    self._warn(out, "grad_vanishing", tag, step,
                               f"{_fmt(value)} < {_fmt(t.min_grad_norm)}: vanishing gradients")
                elif value > t.max_grad_norm:
                    self._warn(out, "grad_exploding", tag, step,
                               f"{_fmt(value)} > {_fmt(t.max_grad_norm)}: exploding gradients")
            elif tag == DualTags.GRAD_RGB_TO_CLIP:
                self._check_head_ratio(out, tag, step, value, clip_loss)
            elif tag == PSNR_GAP:
                if value > t.max_psnr_gap:
                    self._warn(out, "overfitting", tag, step,
                               f"{_fmt(value)} dB > {_fmt(t.max_psnr_gap)} dB: overfitting (train vs val PSNR)")
            elif tag == VAL_CLIP_SIM:
                if self.clip_active is not False and value < t.min_val_clip_sim:
                    self._warn(out, "poor_clip", tag, step,
                               f"{_fmt(value)} < {_fmt(t.min_val_clip_sim)} after the CLIP warmup: "
                               "poor CLIP learning")
            if tag in OSCILLATION_TAGS:
                self._check_oscillation(out, tag, step, value)
            cascade = _cascade_split(tag)
            if cascade is not None:
                self._check_cascade(out, tag, *cascade, step, value)

    def _check_head_ratio(self, out: list, tag: str, step: int, value: float, clip_loss: float | None) -> None:
        t, active = self.thresholds, self.clip_active
        if active is False or (active is None and value == 0.0):
            return  # warmup: no CLIP gradient, the ratio is logged as 0
        first = self._first_clip_loss
        learning = first is not None and clip_loss is not None and clip_loss < t.clip_loss_learning_fraction * first
        if value > t.max_rgb_to_clip_ratio and not learning:
            self._warn(out, "head_imbalance", tag, step,
                       f"{_fmt(value)} > {_fmt(t.max_rgb_to_clip_ratio)}: RGB head gradients dominate the CLIP head's")
        elif value < t.min_rgb_to_clip_ratio:
            why = ("the CLIP head gets no gradient although clip_loss_active is 1" if value == 0.0
                   else "CLIP head gradients dominate the RGB head's")
            self._warn(out, "head_imbalance", tag, step, f"{_fmt(value)} < {_fmt(t.min_rgb_to_clip_ratio)}: {why}")

    def _check_oscillation(self, out: list, tag: str, step: int, value: float) -> None:
        history = self._recent[tag]
        history.append(value)
        hit, changes, amplitude = oscillation(list(history), self.thresholds)
        if hit:
            self._warn(out, "oscillation", tag, step,
                       f"oscillating: {changes:.0%} sign changes of successive differences and mean |change| "
                       f"{amplitude:.0%} of the loss over the last {self.thresholds.oscillation_window} points")

    def _check_cascade(self, out: list, tag: str, stage: str, name: str, step: int, value: float) -> None:
        t = self.thresholds
        if name == "train_loss":
            self._check_oscillation(out, tag, step, value)
        elif name in ("train_diffusion", "train_physics"):
            diffusion = self._latest.get(f"{stage}/train_diffusion")
            physics = self._latest.get(f"{stage}/train_physics")
            if diffusion is None or physics is None or diffusion[0] != physics[0]:
                return  # wait for both components of the same step
            d, p = diffusion[1], physics[1]
            if d <= 0 or p <= 0:
                return  # a disabled / exactly-zero term: no ratio to judge
            ratio = d / p
            f = t.diffusion_physics_factor
            if ratio > f or ratio < 1 / f:
                self._warn(out, "loss_imbalance", f"{stage}/train_diffusion", step,
                           f"train_diffusion / train_physics = {_fmt(d)} / {_fmt(p)} = {_fmt(ratio)} outside "
                           f"[{_fmt(1 / f)}, {_fmt(f)}]: diffusion vs physics imbalance")
        elif name == "val_loss":
            history = self._recent[tag]
            history.append(value)
            k = t.val_loss_rising_epochs
            recent = list(history)[-(k + 1):]
            if len(recent) == k + 1 and all(b > a for a, b in zip(recent, recent[1:])):
                self._warn(out, "val_loss_rising", tag, step,
                           f"rose {k} epochs in a row ({' -> '.join(_fmt(v) for v in recent)})")
        elif name == "epoch_time":
            first = self._first_epoch_times[tag]
            history = self._recent[tag]
            if len(first) < t.epoch_time_baseline_epochs:
                first.append(value)
                return
            history.append(value)
            if len(history) < t.epoch_time_recent_epochs:
                return
            baseline = statistics.median(first)
            recent = statistics.median(list(history)[-t.epoch_time_recent_epochs:])
            if baseline > 0:
                drift = (recent - baseline) / baseline
                if drift > t.epoch_time_drift and recent - baseline > t.epoch_time_drift_min_s:
                    self._warn(out, "epoch_time_drift", tag, step,
                               f"{_fmt(recent)} s vs {_fmt(baseline)} s (median of the first "
                               f"{t.epoch_time_baseline_epochs} epochs): {drift:+.0%} slower, beyond "
                               f"{t.epoch_time_drift:.0%}")


def check_scalars(series: Mapping[str, list[tuple[int, float]]],
                  thresholds: HealthThresholds | None = None) -> list[HealthWarning]:
    """Warnings for a whole run: {tag: [(step, value), ...]} replayed step by step through `HealthMonitor`.

    Pure (no I/O); gives the same warnings as the in-trainer monitor fed with the same scalars.
    """
    by_step: dict[int, dict[str, float]] = defaultdict(dict)
    for tag, points in series.items():
        for step, value in points:
            by_step[int(step)][tag] = float(value)
    monitor = HealthMonitor(thresholds)
    for step in sorted(by_step):
        values = by_step[step]
        if DualTags.CLIP_ACTIVE in values:  # the flag first, then the rest (as the trainer logs it)
            values = {DualTags.CLIP_ACTIVE: values.pop(DualTags.CLIP_ACTIVE), **values}
        monitor.check(step, values)
    return monitor.warnings


def trend(points: list[tuple[int, float]], thresholds: HealthThresholds | None = None) -> str:
    """'rising' / 'falling' / 'flat' from the least-squares slope over the last `trend_points` points."""
    t = thresholds or HealthThresholds()
    values = [v for _, v in points[-t.trend_points:] if math.isfinite(v)]
    if len(values) < 2:
        return "-"
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(values)
    slope = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values)) / sum((i - mean_x) ** 2 for i in range(n))
    change = slope * (n - 1)
    scale = max(abs(mean_y), 1e-12)
    if abs(change) / scale < t.trend_flat:
        return "flat"
    return "rising" if change > 0 else "falling"


def watch_note(tag: str, series: Mapping[str, list[tuple[int, float]]],
               thresholds: HealthThresholds | None = None) -> str | None:
    """A 'Healthy Training' note on the last value of `tag` (report only; not a warning)."""
    t = thresholds or HealthThresholds()
    points = series.get(tag) or []
    if not points or not math.isfinite(points[-1][1]):
        return None
    last = points[-1][1]
    if tag == PSNR_GAP and last > t.healthy_psnr_gap:
        return f"above the healthy < {_fmt(t.healthy_psnr_gap)} dB"
    if tag == DualTags.GRAD_TOTAL and not t.healthy_grad_norm_min <= last <= t.healthy_grad_norm_max:
        return f"outside the healthy {_fmt(t.healthy_grad_norm_min)}-{_fmt(t.healthy_grad_norm_max)}"
    if tag == VAL_CLIP_SIM and last < t.healthy_val_clip_sim:
        active = series.get(DualTags.CLIP_ACTIVE)
        if not active or active[-1][1] >= 0.5:
            return f"below the healthy > {_fmt(t.healthy_val_clip_sim)}"
    direction = trend(points, t)
    if tag in (DualTags.TRAIN_PSNR, "Eval/Frame/val_psnr") and direction == "falling":
        return "falling (should increase)"
    if (tag in OSCILLATION_TAGS or (_cascade_split(tag) or ("", ""))[1] == "train_loss") and direction == "rising":
        return "rising (should decrease)"
    return None
