"""The cascade TensorBoard contract held as literal lists, copied from the monitoring guide
(docs/tags_cascade.md), never from the code's own constants: a renamed tag in
hnerv_fast/logging/layouts.py must fail here. Both tiny stages train 3 epochs of 4 steps, per-step tags
every 3 steps (so the step counter runs on across epochs and restarts per stage)."""
from __future__ import annotations

import pytest

from hnerv_fast.config import load_config
from hnerv_fast.train.trainer import run
from tests.event_files import load_events

PER_STEP = ["train_loss_step", "train_diffusion_step", "train_physics_step"]
PER_EPOCH = ["train_loss", "train_diffusion", "train_physics", "val_loss", "val_diffusion", "val_physics",
             "epoch_time", "learning_rate"]
PERF_PER_EPOCH = ["Perf/step_time_ms", "Perf/samples_per_s", "Perf/peak_memory_mib"]  # the GPU issue's addition
SKIPPED_PER_EPOCH = ["skipped_steps"]  # the robustness issue's addition (non-finite steps skipped)
PER_SAMPLE = ["val_psnr", "val_ssim", "val_drr_mse"]  # the fidelity issue's addition, with the images
EPOCHS, STEPS_PER_EPOCH, LOG_EVERY = 3, 16 // 4, 3  # 16 training cases of 20, batch 4
SAMPLE_EVERY = 2  # validation images at epoch 2 and, by the "also at the last epoch" rule, 3
SIZES = {"stage_16": 16, "stage_32": 32}  # volume edge per stage
STAGES = list(SIZES)


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cascade_contract")
    cfg = load_config("configs/cascade_tiny.yaml", [
        f"output.checkpoint_dir={tmp}", "output.run_name=contract", f"train.epochs={EPOCHS}",
        f"train.log_every_steps={LOG_EVERY}", "train.save_every=3", "train.val_samples=1", f"train.sample_every={SAMPLE_EVERY}",
        "diffusion.ddim_steps=2"])
    run(cfg)
    return load_events(tmp / "tensorboard" / "contract")


def test_exactly_the_contract_scalars_are_written(events):
    written = set(events.Tags()["scalars"])
    expected = {f"{s}/{n}" for s in STAGES
                for n in PER_STEP + PER_EPOCH + PERF_PER_EPOCH + SKIPPED_PER_EPOCH + PER_SAMPLE}
    assert written == expected, f"missing {sorted(expected - written)}, unexpected {sorted(written - expected)}"


def test_each_tag_at_its_cadence(events):
    for stage in STAGES:
        for name in PER_STEP:
            steps = [e.step for e in events.Scalars(f"{stage}/{name}")]
            assert steps == list(range(LOG_EVERY, EPOCHS * STEPS_PER_EPOCH + 1, LOG_EVERY)), (stage, name)
        for name in PER_EPOCH + PERF_PER_EPOCH + SKIPPED_PER_EPOCH:
            assert [e.step for e in events.Scalars(f"{stage}/{name}")] == [1, 2, 3], (stage, name)


def test_epoch_time_is_positive_seconds(events):
    for stage in STAGES:
        assert all(0 < e.value < 600 for e in events.Scalars(f"{stage}/epoch_time")), stage


def test_validation_images_at_their_cadence(events):
    """val_samples=1: one validation case per stage, `{stage}/val_samples/<case>`, middle slice GT | gap | sample."""
    images = events.Tags()["images"]
    for stage, size in SIZES.items():
        tags = [t for t in images if t.startswith(f"{stage}/val_samples/")]
        assert len(tags) == 1, (stage, images)
        written = events.Images(tags[0])
        assert [e.step for e in written] == [2, 3], (stage, [e.step for e in written])
        assert all((e.height, e.width) == (size, 2 * size + 1) for e in written), stage
    assert len(images) == len(SIZES), images


def test_sample_quality_at_the_image_cadence(events):
    for stage in STAGES:
        for name in PER_SAMPLE:
            assert [e.step for e in events.Scalars(f"{stage}/{name}")] == [2, 3], (stage, name)
        assert all(0 <= e.value <= 1 for e in events.Scalars(f"{stage}/val_ssim"))
