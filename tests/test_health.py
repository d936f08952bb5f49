"""Health rules: synthetic runs with one known bad curve each produce exactly that warning."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from hnerv_fast.health import HealthMonitor, HealthThresholds, LogdirError, check_logdir, check_scalars, main
from hnerv_fast.health_rules import PSNR_GAP, VAL_CLIP_SIM, oscillation, trend
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.logging.layouts import CascadeTags, DualTags as T, cascade_layout, dual_layout

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, WARMUP, EVALS, BATCHES = 30, 10, (10, 20, 30), 4
STAGES = ("stage_64", "stage_128")


# ------------------------------------------------------------------------------- synthetic runs
def healthy_dual() -> dict[str, list[tuple[int, float]]]:
    """Every DualTags.SCALARS tag with curves the guide calls healthy (warmup 10 epochs, eval 10/20/30)."""
    s: dict[str, list] = {tag: [] for tag in T.SCALARS}

    def put(tag, step, value):
        s[tag].append((step, float(value)))

    for e in range(1, EPOCHS + 1):
        active = e > WARMUP
        pixel = 0.1 * math.exp(-e / 10) + 0.01
        clip = 0.3 * math.exp(-(e - WARMUP) / 8) + 0.05 if active else 0.0
        g_rgb, g_clip = 0.8 * math.exp(-e / 40), (0.4 if active else 0.0)
        for tag, v in {
            T.TRAIN_PSNR: 20 + 10 * (1 - math.exp(-e / 8)), T.LR: 0.003 * (0.55 + 0.45 * math.cos(math.pi * e / EPOCHS)),
            T.PIXEL_LOSS: pixel, T.CLIP_LOSS: clip, T.TOTAL_LOSS: pixel + 0.1 * clip, T.CLIP_LOSS_WEIGHTED: 0.1 * clip,
            T.PIXEL_TO_CLIP: pixel / clip if clip else 0.0, T.CLIP_ACTIVE: float(active),
            T.GRAD_TOTAL: math.hypot(g_rgb, g_clip, 0.5), T.GRAD_RGB: g_rgb, T.GRAD_CLIP: g_clip, T.GRAD_DECODER: 0.5,
            T.GRAD_RGB_TO_CLIP: g_rgb / g_clip if g_clip else 0.0,
        }.items():
            put(tag, e, v)
        for b in range(BATCHES):
            step = (e - 1) * BATCHES + b
            for tag, v in zip(T.BATCH, (19 + e * 0.3, pixel * 1.05, clip, pixel + 0.1 * clip)):
                put(tag, step, v)
        if e % 10 == 0:
            for tag, v in zip(T.PARAMS, (0.01, 0.2, -0.01, 0.1)):
                put(tag, e, v)
        if e in EVALS:
            train_psnr, val_psnr = 25 + e / 5, 23.5 + e / 5  # gap 1.5 dB
            train_sim, val_sim = (0.2, 0.1) if not active and e <= WARMUP else (0.9, 0.86 + e / 1000)
            values = {"Eval/Frame/train_psnr": train_psnr, "Eval/Frame/val_psnr": val_psnr,
                      "Eval/Frame/train_clip_sim": train_sim, VAL_CLIP_SIM: val_sim,
                      "Eval/Frame/train_clip_dist": 1 - train_sim, "Eval/Frame/val_clip_dist": 1 - val_sim,
                      PSNR_GAP: train_psnr - val_psnr, "Eval/Gap/clip_sim_gap": train_sim - val_sim,
                      "Eval/Info/num_train_frames": 36, "Eval/Info/num_val_frames": 4,
                      "Eval/Info/num_train_patches": 288, "Eval/Info/num_val_patches": 32}
            for tag in T.PSNR_STATS + T.PATCH:
                values[tag] = 1.0
            for tag, v in values.items():
                put(tag, e, v)
    assert all(s[tag] for tag in T.SCALARS)
    return s


def healthy_cascade() -> dict[str, list[tuple[int, float]]]:
    """Two stages, 10 epochs each: losses decrease (val_loss has a 2-epoch uptick), first epoch compiles."""
    s: dict[str, list] = {}
    val_noise = [0, 0, 0, 0.02, 0.04, 0, 0, 0, 0, 0]  # two rises in a row: below the 3 of the rule
    for stage in STAGES:
        for e in range(1, 11):
            diffusion, physics = 0.5 * math.exp(-e / 5) + 0.05, 0.05 * math.exp(-e / 5) + 0.005  # ratio 10
            values = {"train_diffusion": diffusion, "train_physics": physics, "train_loss": diffusion + 0.3 * physics,
                      "val_diffusion": diffusion * 1.1, "val_physics": physics * 1.1,
                      "val_loss": (diffusion + 0.3 * physics) * 1.1 + val_noise[e - 1],
                      "epoch_time": 90.0 if e == 1 else 60.0 + (e % 3), "learning_rate": 1e-4}
            for name, v in values.items():
                s.setdefault(CascadeTags.tag(stage, name), []).append((e, v))
            for b in range(3):
                for name in CascadeTags.STEP:
                    s.setdefault(CascadeTags.tag(stage, name), []).append(((e - 1) * 150 + b * 50, diffusion))
    return s


def modify(series, tag, fn, steps=None):
    """Copy of `series` with fn(step, value) applied to `tag` (at `steps`, default all)."""
    out = {k: list(v) for k, v in series.items()}
    out[tag] = [(st, fn(st, v) if steps is None or st in steps else v) for st, v in out[tag]]
    return out


def kinds(warnings) -> set[tuple[str, str]]:
    return {(w.kind, w.tag) for w in warnings}


def write_run(logdir: Path, series, layout=None) -> Path:
    by_step: dict[int, dict] = {}
    for tag, points in series.items():
        for step, value in points:
            by_step.setdefault(step, {})[tag] = value
    with AsyncSummaryWriter(str(logdir)) as writer:
        if layout:
            writer.add_custom_scalars(layout)
        for step in sorted(by_step):
            writer.add_scalars(step, by_step[step])
    return logdir


# One bad curve each -> exactly one warning (kind, tag).
S64, S128 = STAGES
BAD_DUAL = {
    "overfitting": (lambda s: modify(s, PSNR_GAP, lambda st, v: 6.5, {30}), ("overfitting", PSNR_GAP)),
    "grad_vanishing": (lambda s: modify(s, T.GRAD_TOTAL, lambda st, v: 1e-4, set(range(25, 31))),
                       ("grad_vanishing", T.GRAD_TOTAL)),
    "grad_exploding": (lambda s: modify(s, T.GRAD_TOTAL, lambda st, v: 250.0, {15}), ("grad_exploding", T.GRAD_TOTAL)),
    "rgb_head_dominates": (lambda s: modify(modify(s, T.GRAD_RGB_TO_CLIP, lambda st, v: 25.0, set(range(20, 31))),
                                            T.CLIP_LOSS, lambda st, v: 0.3, set(range(11, 31))),  # not learning
                           ("head_imbalance", T.GRAD_RGB_TO_CLIP)),
    "clip_head_dominates": (lambda s: modify(s, T.GRAD_RGB_TO_CLIP, lambda st, v: 0.05, set(range(12, 31))),
                            ("head_imbalance", T.GRAD_RGB_TO_CLIP)),
    "poor_clip": (lambda s: modify(s, VAL_CLIP_SIM, lambda st, v: 0.5, {20, 30}), ("poor_clip", VAL_CLIP_SIM)),
    "oscillation": (lambda s: modify(s, T.TOTAL_LOSS, lambda st, v: 0.05 if st % 2 else 0.08, set(range(19, 31))),
                    ("oscillation", T.TOTAL_LOSS)),
    "nonfinite": (lambda s: modify(s, T.TOTAL_LOSS, lambda st, v: float("nan"), {30}), ("nonfinite", T.TOTAL_LOSS)),
}
BAD_CASCADE = {
    "loss_imbalance": (lambda s: modify(s, f"{S64}/train_physics", lambda st, v: v / 50.0),  # ratio 500
                       ("loss_imbalance", f"{S64}/train_diffusion")),
    "val_loss_rising": (lambda s: modify(s, f"{S128}/val_loss", lambda st, v: 0.3 + 0.01 * st, {7, 8, 9, 10}),
                        ("val_loss_rising", f"{S128}/val_loss")),
    "epoch_time_drift": (lambda s: modify(s, f"{S64}/epoch_time", lambda st, v: 80.0, {10}),  # +31 % vs 61 s
                         ("epoch_time_drift", f"{S64}/epoch_time")),
    "cascade_oscillation": (lambda s: modify(s, f"{S128}/train_loss", lambda st, v: 0.2 if st % 2 else 0.3),
                            ("oscillation", f"{S128}/train_loss")),
    # the other side of the band: physics 500x larger than diffusion (ratio 1/500 < 1/100) also warns
    "loss_imbalance_physics_dominates": (lambda s: modify(s, f"{S64}/train_physics", lambda st, v: v * 5000.0),
                                         ("loss_imbalance", f"{S64}/train_diffusion")),
}


def test_epoch_time_drift_needs_a_slowdown_of_seconds_not_only_percent():
    """A short epoch (0.3 s -> 0.5 s: +67 %) is scheduling noise; a long one 20 % slower is a slowdown."""
    def run(times):
        return check_scalars({f"{S64}/epoch_time": list(enumerate(times, start=1))})

    assert run([0.3, 0.3, 0.3, 0.5]) == []
    assert kinds(run([10.0, 10.0, 10.0, 12.5])) == {("epoch_time_drift", f"{S64}/epoch_time")}
    assert run([3.0, 3.0, 3.0, 3.9]) == []  # +30 % but 0.9 s


# ------------------------------------------------------------------------------------ pure rules
def test_healthy_synthetic_runs_have_no_warnings():
    assert check_scalars(healthy_dual()) == []
    assert check_scalars(healthy_cascade()) == []


@pytest.mark.parametrize("case", sorted(BAD_DUAL))
def test_dual_rule(case):
    make, expected = BAD_DUAL[case]
    assert kinds(check_scalars(make(healthy_dual()))) == {expected}


@pytest.mark.parametrize("case", sorted(BAD_CASCADE))
def test_cascade_rule(case):
    make, expected = BAD_CASCADE[case]
    assert kinds(check_scalars(make(healthy_cascade()))) == {expected}


def test_warning_step_is_first_occurrence():
    (warning,) = check_scalars(BAD_DUAL["grad_vanishing"][0](healthy_dual()))
    assert warning.step == 25 and "vanishing" in warning.message


def test_warmup_gates_clip_rules():
    # clip_loss_active 0: ratio 0 and low val_clip_sim are expected, not warnings; once it is 1 they are.
    monitor = HealthMonitor()
    assert monitor.update(1, {T.CLIP_ACTIVE: 0.0, T.GRAD_RGB_TO_CLIP: 0.0}) == []
    assert monitor.update(1, {VAL_CLIP_SIM: 0.1}) == []
    (line,) = monitor.update(2, {T.CLIP_ACTIVE: 1.0, T.GRAD_RGB_TO_CLIP: 0.0})
    assert T.GRAD_RGB_TO_CLIP in line and "no gradient" in line
    (line,) = monitor.update(2, {VAL_CLIP_SIM: 0.1})
    assert VAL_CLIP_SIM in line


def test_monitor_reports_each_kind_once():
    monitor = HealthMonitor()
    first = monitor.update(3, {T.GRAD_TOTAL: 500.0})
    assert len(first) == 1 and first[0].startswith("[health] ") and "exploding" in first[0]
    assert monitor.update(4, {T.GRAD_TOTAL: 600.0}) == []
    (vanishing,) = monitor.update(5, {T.GRAD_TOTAL: 1e-6})  # another kind on the same tag is new
    assert "vanishing" in vanishing
    assert monitor.update(6, {T.GRAD_TOTAL: 1.0}) == []
    assert [w.kind for w in monitor.warnings] == ["grad_exploding", "grad_vanishing"]


def test_monitor_streaming_equals_offline_replay():
    series = BAD_DUAL["oscillation"][0](BAD_DUAL["overfitting"][0](healthy_dual()))
    monitor = HealthMonitor()
    by_step: dict[int, dict] = {}
    for tag, points in series.items():
        for step, value in points:
            by_step.setdefault(step, {})[tag] = value
    for step in sorted(by_step):
        monitor.update(step, by_step[step])
    assert kinds(monitor.warnings) == kinds(check_scalars(series)) == {
        ("overfitting", PSNR_GAP), ("oscillation", T.TOTAL_LOSS)}


def test_monitor_never_raises():
    monitor = HealthMonitor()
    (line,) = monitor.update(1, {"x": "not a number"})
    assert "health monitor error" in line
    assert monitor.update(2, {T.GRAD_TOTAL: 1.0}) == []


def test_oscillation_definition():
    t = HealthThresholds()
    noisy_decrease = [1.0 - 0.05 * i + (0.01 if i % 2 else 0.0) for i in range(10)]
    plateau = [0.1 + (0.001 if i % 2 else 0.0) for i in range(10)]
    zigzag = [0.1 + (0.05 if i % 2 else 0.0) for i in range(10)]
    assert not oscillation(noisy_decrease, t)[0]  # few sign changes
    assert not oscillation(plateau, t)[0]  # sign changes, tiny amplitude
    assert oscillation(zigzag, t)[0]
    assert not oscillation(zigzag[:9], t)[0]  # needs a full window


def test_oscillation_needs_more_than_half_sign_changes():
    """Exactly 50 % sign changes (4 of 8 pairs) is not oscillation ("more than 50 %"); 5 of 8 is."""
    t = HealthThresholds()
    assert t.oscillation_window == 10 and t.oscillation_sign_changes == 0.5

    def walk(signs):  # 10 values whose 9 differences are +-0.5 with these signs (amplitude ~25 % of the loss)
        values = [1.0]
        for sign in signs:
            values.append(values[-1] + 0.5 * sign)
        return values

    hit, changes, amplitude = oscillation(walk([1, -1, 1, -1, 1, 1, 1, 1, 1]), t)
    assert (hit, changes) == (False, 0.5) and amplitude > t.oscillation_amplitude
    hit, changes, _ = oscillation(walk([-1, 1, -1, 1, -1, 1, 1, 1, 1]), t)
    assert (hit, changes) == (True, 0.625)


def test_val_loss_rising_needs_strict_rises():
    """val_loss_rising counts strict increases: a flat (or partly flat) val_loss is no warning."""
    def run(values):
        return check_scalars({f"{S64}/val_loss": list(enumerate(values, start=1))})

    assert run([0.5, 0.5, 0.5, 0.5]) == []
    assert run([0.5, 0.6, 0.6, 0.7]) == []
    assert kinds(run([0.5, 0.6, 0.7, 0.8])) == {("val_loss_rising", f"{S64}/val_loss")}


def test_vanishing_gradient_is_strictly_below_min_grad_norm():
    """A total_norm exactly at min_grad_norm is not vanishing (docs: "< min_grad_norm"); just below is."""
    t = HealthThresholds()
    monitor = HealthMonitor(t)
    assert monitor.update(1, {T.GRAD_TOTAL: t.min_grad_norm}) == []
    (line,) = monitor.update(2, {T.GRAD_TOTAL: t.min_grad_norm * 0.99})
    assert "vanishing" in line


def test_trend():
    assert trend([(i, float(i)) for i in range(10)]) == "rising"
    assert trend([(i, -float(i)) for i in range(10)]) == "falling"
    assert trend([(i, 5.0) for i in range(10)]) == "flat"
    assert trend([(0, 1.0)]) == "-"


def test_thresholds_are_overridable():
    bad = BAD_DUAL["overfitting"][0](healthy_dual())
    assert check_scalars(bad, HealthThresholds(max_psnr_gap=8.0)) == []
    assert HealthThresholds.from_overrides(["max_psnr_gap=8", "oscillation_window=12"]) == HealthThresholds(
        max_psnr_gap=8.0, oscillation_window=12)
    with pytest.raises(ValueError, match="unknown health threshold"):
        HealthThresholds.from_overrides({"max_gap": 1})
    with pytest.raises(ValueError):
        HealthThresholds(oscillation_window=2)


def test_thresholds_embed_as_config_section():
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(HealthThresholds), OmegaConf.from_dotlist(["max_grad_norm=50"]))
    thresholds = OmegaConf.to_object(merged)
    assert isinstance(thresholds, HealthThresholds) and thresholds.max_grad_norm == 50.0


# -------------------------------------------------------------------------------- event files
@pytest.fixture(scope="module")
def healthy_logdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("healthy")
    write_run(root / "dual" / "tensorboard", healthy_dual(), dual_layout())
    write_run(root / "cascade" / "tensorboard", healthy_cascade(), cascade_layout(list(STAGES)))
    return root


def test_event_files_round_trip(healthy_logdir):
    reports = check_logdir(healthy_logdir)
    assert [r.name for r in reports] == ["cascade/tensorboard", "dual/tensorboard"]
    assert all(r.warnings == [] for r in reports)
    assert set(T.SCALARS) <= set(reports[1].series)


@pytest.mark.parametrize("case", ["overfitting", "poor_clip", "oscillation", "nonfinite"])
def test_bad_dual_event_file(tmp_path, case):
    make, expected = BAD_DUAL[case]
    write_run(tmp_path / "run", make(healthy_dual()), dual_layout())
    (report,) = check_logdir(tmp_path)
    assert kinds(report.warnings) == {expected}


@pytest.mark.parametrize("case", ["loss_imbalance", "val_loss_rising", "epoch_time_drift"])
def test_bad_cascade_event_file(tmp_path, case):
    make, expected = BAD_CASCADE[case]
    write_run(tmp_path / "run", make(healthy_cascade()))
    (report,) = check_logdir(tmp_path)
    assert kinds(report.warnings) == {expected}


# ---------------------------------------------------------------------------------------- CLI
def test_cli_healthy_exit_0(healthy_logdir, capsys):
    assert main([str(healthy_logdir)]) == 0
    out = capsys.readouterr().out
    assert "run dual/tensorboard" in out and "run cascade/tensorboard" in out and "WARNING" not in out
    assert f"{T.TOTAL_LOSS} " in out and "falling" in out and f"{S128}/epoch_time" in out


def test_cli_warnings_exit_1(tmp_path, capsys):
    write_run(tmp_path / "good", healthy_dual())
    write_run(tmp_path / "bad", BAD_DUAL["grad_exploding"][0](healthy_dual()))
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith(T.GRAD_TOTAL) and "WARNING" in l)
    assert "exploding" in line and "250" in line
    assert "1 warning in 1 of 2 run(s)" in out
    # overridden threshold: healthy again
    assert main([str(tmp_path), "--set", "max_grad_norm=1000"]) == 0


def test_cli_unreadable_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2  # empty directory
    assert "no TensorBoard event files" in capsys.readouterr().err
    with AsyncSummaryWriter(str(tmp_path / "textonly")) as writer:  # event file without scalars
        writer.add_text("note", "hello", 0)
    assert main([str(tmp_path)]) == 2
    assert "hold no scalars" in capsys.readouterr().err
    with pytest.raises(LogdirError):
        check_logdir(tmp_path / "missing")


def test_cli_module_entry_point(healthy_logdir, tmp_path):
    run = [sys.executable, "-m", "hnerv_fast.health"]
    ok = subprocess.run(run + [str(healthy_logdir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    missing = subprocess.run(run + [str(tmp_path / "nope")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_a_run_that_gets_faster_is_healthy(tmp_path):
    """Epoch-time drift warns on slowdowns only: the tiny cascade's later epochs run ~40 % faster (warm caches)."""
    write_run(tmp_path / "run", modify(healthy_cascade(), f"{S64}/epoch_time", lambda st, v: 30.0, {10}))
    (report,) = check_logdir(tmp_path)
    assert not report.warnings, report.warnings


def test_rgb_dominance_is_healthy_once_the_clip_loss_has_halved(tmp_path):
    """A CLIP head that fits its targets (near-identical ones with a random-init CLIP: the tiny demo) gets little
    gradient: the ratio climbs while the CLIP loss falls. Not a warning."""
    write_run(tmp_path / "run", modify(healthy_dual(), T.GRAD_RGB_TO_CLIP, lambda st, v: 25.0, set(range(20, 31))))
    (report,) = check_logdir(tmp_path)
    assert not report.warnings, report.warnings
