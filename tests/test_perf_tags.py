"""Perf/* tags (step time, samples/s, peak memory) once per epoch in both trainers, read back from the
event files; values the writer resolves on its own thread (callables)."""
from __future__ import annotations

import math
import threading

import pytest
import torch

from hnerv_fast.config import load_config
from hnerv_fast.logging.async_writer import AsyncSummaryWriter
from hnerv_fast.logging.layouts import CascadeTags, PerfTags
from hnerv_fast.train.perf import EpochMeter
from hnerv_fast.train.trainer import run
from tests.event_files import custom_scalar_layout, load_events, scalar_series

DUAL = ["model.embed=pe_1.25_8", "model.fc_dim=16", "model.lower_width=8", "train.epochs=2",
        "loss.pixel_loss_warmup_epochs=1", "train.eval_freq=2", "train.params_every=2", "train.progress=false",
        "data.num_frames=10"]
CASCADE = ["data.num_cases=6", "train.epochs=2", "train.val_samples=1", "diffusion.ddim_steps=2",
           "train.stages=[stage_16]", "train.progress=false", "output.run_name=perf"]


def _check_perf(acc, tags: dict[str, str], epochs: int, steps: int, samples: int) -> None:
    """Once per epoch, positive and finite; samples/s and step time describe the same seconds."""
    series = {name: scalar_series(acc, tag) for name, tag in tags.items()}
    for name, points in series.items():
        assert [s for s, _ in points] == list(range(1, epochs + 1)), name
        assert all(math.isfinite(v) and v > 0 for _, v in points), (name, points)
    for (_, ms), (_, rate) in zip(series[PerfTags.STEP_TIME_MS], series[PerfTags.SAMPLES_PER_S]):
        assert samples / rate == pytest.approx(steps * ms / 1000, rel=1e-4)


def test_dual_trainer_writes_perf_tags(tmp_path):
    cfg = load_config("configs/dual_hnerv_tiny.yaml", DUAL + [
        f"clip.cache_dir={tmp_path}/clip", f"output.output_dir={tmp_path}/out"])
    out = run(cfg)
    acc = load_events(out / "tensorboard")
    # 9 train frames x 8 patches = 72 samples: 2 steps of 32 (drop_last)
    _check_perf(acc, {t: t for t in PerfTags.ALL}, cfg.train.epochs, steps=2, samples=64)
    assert custom_scalar_layout(acc)["Performance"] == ["Step time (ms)", "Samples / s", "Peak memory (MiB)"]


def test_cascade_trainer_writes_perf_tags_per_stage(tmp_path):
    cfg = load_config("configs/cascade_tiny.yaml", CASCADE + [f"output.checkpoint_dir={tmp_path}"])
    run(cfg)
    acc = load_events(tmp_path / "tensorboard" / "perf")
    tags = {name: CascadeTags.tag("stage_16", name) for name in CascadeTags.PERF}
    _check_perf(acc, tags, cfg.train.epochs, steps=1, samples=4)  # 5 train cases: 1 step of 4
    # epoch_time is the same measurement as the step time (on GPU: the CUDA events, not the host's clock)
    epoch_time = scalar_series(acc, CascadeTags.tag("stage_16", "epoch_time"))
    step_ms = scalar_series(acc, tags[PerfTags.STEP_TIME_MS])
    assert [t for _, t in epoch_time] == pytest.approx([1 * ms / 1000 for _, ms in step_ms], rel=1e-5)
    assert custom_scalar_layout(acc)["Performance"] == ["Step time (ms)", "Samples / s", "Peak memory (MiB)"]


def test_cpu_meter_values():
    meter = EpochMeter(torch.device("cpu"))
    values = meter.stop(steps=4, samples=128)
    assert set(values) == set(PerfTags.ALL)
    assert all(isinstance(v, float) and v > 0 for v in values.values())
    assert values[PerfTags.SAMPLES_PER_S] == pytest.approx(128 / (4 * values[PerfTags.STEP_TIME_MS] / 1000))


def test_cpu_meter_seconds_are_the_step_time():
    meter = EpochMeter(torch.device("cpu"))
    values = meter.stop(steps=4, samples=128)
    assert meter.seconds == pytest.approx(4 * values[PerfTags.STEP_TIME_MS] / 1000, rel=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_meter_times_the_device_work_not_the_launches():
    """The work queued between start and stop counts, though the host returns before it ran."""
    device = torch.device("cuda")
    a = torch.randn(4096, 4096, device=device)
    torch.cuda.synchronize()
    meter = EpochMeter(device)
    for _ in range(20):
        a = a @ a / 64
    values = meter.stop(steps=20, samples=20)
    assert callable(meter.seconds) and callable(values[PerfTags.STEP_TIME_MS])
    seconds = meter.seconds()  # waits for the end event
    # 2.7 TFLOP of float32 products: over 3 ms even at an H200's dense bf16 peak; queuing them takes far less
    assert seconds > 1e-3
    assert seconds == pytest.approx(20 * values[PerfTags.STEP_TIME_MS]() / 1000, rel=1e-6)


def test_callable_values_are_resolved_on_the_writer_thread(tmp_path):
    threads = []

    def late() -> float:
        threads.append(threading.current_thread().name)
        return 7.5

    with AsyncSummaryWriter(str(tmp_path)) as writer:
        writer.add_scalars(3, {"a": torch.tensor(1.0), "b": late, "c": 2.0})
        writer.flush()
        assert writer.latest == {"a": 1.0, "b": 7.5, "c": 2.0}
    assert threads == ["tensorboard-writer"]
    assert scalar_series(load_events(tmp_path), "b") == [(3, 7.5)]
