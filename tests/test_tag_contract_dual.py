"""The dual-head TensorBoard contract held as literal lists, copied from the monitoring guide
(docs/tags_dual_hnerv.md), never from the code's own constants: a renamed tag in
hnerv_fast/logging/layouts.py must fail here. The run uses cadences that tell the rules apart: 7 epochs
(not a multiple of eval_freq 3, so the "also at E-4, E-2 and E" rule shows), params_every 2 != eval_freq,
log_every_steps 2."""
from __future__ import annotations

import pytest

from hnerv_fast.config import load_config
from hnerv_fast.train.trainer import run
from tests.event_files import load_events

PER_EPOCH = [
    "Train/PSNR", "Train/learning_rate", "Train/Loss/pixel_loss", "Train/Loss/clip_loss", "Train/Loss/total_loss",
    "Train/Loss/clip_loss_weighted", "Train/Loss/pixel_to_clip_ratio", "Train/clip_loss_active",
    "Train/Gradients/total_norm", "Train/Gradients/rgb_head_norm", "Train/Gradients/clip_head_norm",
    "Train/Gradients/decoder_norm", "Train/Gradients/rgb_to_clip_ratio",
]
PERF_PER_EPOCH = ["Perf/step_time_ms", "Perf/samples_per_s", "Perf/peak_memory_mib"]  # the GPU issue's addition
SKIPPED_PER_EPOCH = ["Train/skipped_steps"]  # the robustness issue's addition (non-finite steps skipped)
PER_BATCH = ["Train_Batch/PSNR", "Train_Batch/pixel_loss", "Train_Batch/clip_loss", "Train_Batch/total_loss"]
PER_PARAMS = ["Model/Params/rgb_head_mean", "Model/Params/rgb_head_std", "Model/Params/clip_head_mean",
              "Model/Params/clip_head_std"]
PER_EVAL = [
    "Eval/Frame/train_psnr", "Eval/Frame/val_psnr", "Eval/Frame/train_clip_sim", "Eval/Frame/val_clip_sim",
    "Eval/Frame/train_clip_dist", "Eval/Frame/val_clip_dist",
    "Eval/PSNR_Stats/train_std", "Eval/PSNR_Stats/val_std", "Eval/PSNR_Stats/train_min",
    "Eval/PSNR_Stats/train_max", "Eval/PSNR_Stats/val_min", "Eval/PSNR_Stats/val_max",
    "Eval/Patch/train_psnr_std", "Eval/Patch/val_psnr_std", "Eval/Patch/train_clip_sim_std",
    "Eval/Patch/val_clip_sim_std",
    "Eval/Gap/psnr_gap", "Eval/Gap/clip_sim_gap",
    "Eval/Info/num_train_frames", "Eval/Info/num_val_frames", "Eval/Info/num_train_patches",
    "Eval/Info/num_val_patches",
]
HISTOGRAMS = ["Eval/Histogram/train_psnr_distribution", "Eval/Histogram/val_psnr_distribution",
              "Eval/Histogram/train_clip_sim_distribution", "Eval/Histogram/val_clip_sim_distribution"]

EPOCHS, EVAL_FREQ, PARAMS_EVERY, LOG_EVERY, EVAL_IMAGES = 7, 3, 2, 2, 2
STEPS_PER_EPOCH = 36 * 8 // 32  # 36 training frames of 40 (split 9_9_10) x 8 patches / batch 32
EVAL_EPOCHS = [3, 5, 6, 7]  # every 3rd, and E-4, E-2, E as the published trainer


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    cfg = load_config("configs/dual_hnerv_tiny.yaml", [
        f"output.output_dir={tmp}/out", f"clip.cache_dir={tmp}/clip", "train.progress=false",
        f"train.epochs={EPOCHS}", f"train.eval_freq={EVAL_FREQ}", f"train.params_every={PARAMS_EVERY}",
        f"train.log_every_steps={LOG_EVERY}", f"train.eval_images={EVAL_IMAGES}", "loss.pixel_loss_warmup_epochs=2",
        "model.embed=pe_1.25_8", "model.fc_dim=16", "model.lower_width=8"])
    return load_events(run(cfg) / "tensorboard")


def _steps(acc, tag):
    return [e.step for e in acc.Scalars(tag)]


def test_exactly_the_contract_scalars_are_written(events):
    written = set(events.Tags()["scalars"])
    expected = set(PER_EPOCH + PERF_PER_EPOCH + SKIPPED_PER_EPOCH + PER_BATCH + PER_PARAMS + PER_EVAL)
    assert written == expected, f"missing {sorted(expected - written)}, unexpected {sorted(written - expected)}"
    assert set(events.Tags()["histograms"]) == set(HISTOGRAMS)


def test_each_tag_at_its_cadence(events):
    for tag in PER_EPOCH + PERF_PER_EPOCH + SKIPPED_PER_EPOCH:
        assert _steps(events, tag) == list(range(1, EPOCHS + 1)), tag
    for tag in PER_BATCH:
        assert _steps(events, tag) == list(range(LOG_EVERY, EPOCHS * STEPS_PER_EPOCH + 1, LOG_EVERY)), tag
    for tag in PER_PARAMS:
        assert _steps(events, tag) == [2, 4, 6], tag
    for tag in PER_EVAL:
        assert _steps(events, tag) == EVAL_EPOCHS, tag
    for tag in HISTOGRAMS:
        assert [h.step for h in events.Histograms(tag)] == EVAL_EPOCHS, tag


def test_prediction_images_named_by_split_and_frame_at_each_eval(events):
    images = sorted(events.Tags()["images"])
    # eval_images frames per split: the first training frames (0, 1) and validation frames (9, 19)
    assert images == ["Eval/Images/train_frame0_target_vs_pred", "Eval/Images/train_frame1_target_vs_pred",
                      "Eval/Images/val_frame19_target_vs_pred", "Eval/Images/val_frame9_target_vs_pred"], images
    for tag in images:
        assert [i.step for i in events.Images(tag)] == EVAL_EPOCHS, tag


def test_clip_loss_switches_on_after_the_warmup(events):
    assert [e.value for e in events.Scalars("Train/clip_loss_active")] == [0, 0, 1, 1, 1, 1, 1]
