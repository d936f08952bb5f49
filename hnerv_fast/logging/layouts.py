"""TensorBoard tag names (contracts: docs/tags_dual_hnerv.md, docs/tags_cascade.md) and custom_scalars layouts.

Tag strings live here once; tasks, tests and the health report import them.
"""
from __future__ import annotations

import re


def lines(*tags: str) -> list:
    """A Multiline chart of exactly these tags. TensorBoard reads each entry as a regex and matches it as a
    prefix, so a bare "Train/Loss/clip_loss" would also plot Train/Loss/clip_loss_weighted: anchor them."""
    return ["Multiline", [f"^{re.escape(t)}$" for t in tags]]


def lines_matching(*patterns: str) -> list:
    """A Multiline chart of every tag that matches one of these regexes in full."""
    return ["Multiline", [f"^{p}$" for p in patterns]]


class PerfTags:
    """Speed and memory of the training steps, per epoch, in both trainers (the cascade prefixes its stage).

    Step time: mean per optimizer step (CUDA events on GPU, perf_counter on CPU); samples/s: samples of
    all ranks per second of steps; peak memory: the allocator's high-water mark of the epoch's steps on GPU,
    the process's peak resident set size on CPU."""

    STEP_TIME_MS = "Perf/step_time_ms"
    SAMPLES_PER_S = "Perf/samples_per_s"
    PEAK_MEMORY_MIB = "Perf/peak_memory_mib"
    ALL = (STEP_TIME_MS, SAMPLES_PER_S, PEAK_MEMORY_MIB)


class DualTags:
    """The dual-head trainer's tags (docs/tags_dual_hnerv.md)."""

    # per epoch
    TRAIN_PSNR = "Train/PSNR"
    LR = "Train/learning_rate"
    PIXEL_LOSS = "Train/Loss/pixel_loss"
    CLIP_LOSS = "Train/Loss/clip_loss"
    TOTAL_LOSS = "Train/Loss/total_loss"
    CLIP_LOSS_WEIGHTED = "Train/Loss/clip_loss_weighted"
    PIXEL_TO_CLIP = "Train/Loss/pixel_to_clip_ratio"
    CLIP_ACTIVE = "Train/clip_loss_active"
    GRAD_TOTAL = "Train/Gradients/total_norm"
    GRAD_RGB = "Train/Gradients/rgb_head_norm"
    GRAD_CLIP = "Train/Gradients/clip_head_norm"
    GRAD_DECODER = "Train/Gradients/decoder_norm"
    GRAD_RGB_TO_CLIP = "Train/Gradients/rgb_to_clip_ratio"
    EPOCH = (TRAIN_PSNR, LR, PIXEL_LOSS, CLIP_LOSS, TOTAL_LOSS, CLIP_LOSS_WEIGHTED, PIXEL_TO_CLIP, CLIP_ACTIVE,
             GRAD_TOTAL, GRAD_RGB, GRAD_CLIP, GRAD_DECODER, GRAD_RGB_TO_CLIP)

    # per batch (step = global step)
    BATCH_PSNR = "Train_Batch/PSNR"
    BATCH_PIXEL = "Train_Batch/pixel_loss"
    BATCH_CLIP = "Train_Batch/clip_loss"
    BATCH_TOTAL = "Train_Batch/total_loss"
    BATCH = (BATCH_PSNR, BATCH_PIXEL, BATCH_CLIP, BATCH_TOTAL)

    # every params_every epochs
    PARAMS = ("Model/Params/rgb_head_mean", "Model/Params/rgb_head_std",
              "Model/Params/clip_head_mean", "Model/Params/clip_head_std")

    # at each eval (scalars)
    FRAME = tuple(f"Eval/Frame/{s}_{m}" for m in ("psnr", "clip_sim", "clip_dist") for s in ("train", "val"))
    PSNR_STATS = tuple(f"Eval/PSNR_Stats/{s}_{m}" for s in ("train", "val") for m in ("std", "min", "max"))
    PATCH = tuple(f"Eval/Patch/{s}_{m}" for m in ("psnr_std", "clip_sim_std") for s in ("train", "val"))
    GAP = ("Eval/Gap/psnr_gap", "Eval/Gap/clip_sim_gap")
    INFO = ("Eval/Info/num_train_frames", "Eval/Info/num_val_frames",
            "Eval/Info/num_train_patches", "Eval/Info/num_val_patches")
    EVAL = FRAME + PSNR_STATS + PATCH + GAP + INFO
    # at each eval (histograms, images)
    HISTOGRAMS = tuple(f"Eval/Histogram/{s}_{m}_distribution" for s in ("train", "val") for m in ("psnr", "clip_sim"))
    IMAGES_PREFIX = "Eval/Images"

    SCALARS = EPOCH + BATCH + PARAMS + EVAL  # the seed contract
    PERF = PerfTags.ALL  # per epoch, beyond the contract
    SKIPPED_STEPS = "Train/skipped_steps"  # per epoch, beyond the contract: steps skipped for a non-finite loss/norm


def dual_layout() -> dict:
    """The guide's "Recommended TensorBoard Layout": six categories for the Custom Scalars tab."""
    t = DualTags
    return {
        "Overview": {
            "PSNR (train vs val)": lines(t.TRAIN_PSNR, "Eval/Frame/val_psnr"),
            "Total loss": lines(t.TOTAL_LOSS),
            "Learning rate": lines(t.LR),
            "Skipped steps (non-finite loss or gradient norm)": lines(t.SKIPPED_STEPS),
        },
        "Loss Breakdown": {
            "Pixel loss": lines(t.PIXEL_LOSS),
            "CLIP loss": lines(t.CLIP_LOSS),
            "CLIP loss (weighted)": lines(t.CLIP_LOSS_WEIGHTED),
            "CLIP loss active": lines(t.CLIP_ACTIVE),
        },
        "Gradients": {"Gradient norms": lines_matching(r"Train/Gradients/.*")},
        "Evaluation": {
            "Frame metrics": lines_matching(r"Eval/Frame/.*"),
            "Generalization gap": lines_matching(r"Eval/Gap/.*"),
        },
        "Statistics": {
            "PSNR statistics": lines_matching(r"Eval/PSNR_Stats/.*"),
            "Patch statistics": lines_matching(r"Eval/Patch/.*"),
        },
        # Custom Scalars charts only hold scalars, so the histogram category charts the matching
        # distribution summaries (std/min/max); the histograms themselves are in the Histograms tab.
        "Distributions": {
            "PSNR spread (Histograms tab: Eval/Histogram/*)": ["Margin", ["Eval/Frame/val_psnr", "Eval/PSNR_Stats/val_min", "Eval/PSNR_Stats/val_max"]],
            "CLIP similarity spread": lines_matching(r"Eval/Patch/.*clip_sim_std"),
        },
        "Performance": {
            "Step time (ms)": lines(PerfTags.STEP_TIME_MS),
            "Samples / s": lines(PerfTags.SAMPLES_PER_S),
            "Peak memory (MiB)": lines(PerfTags.PEAK_MEMORY_MIB),
        },
    }


class CascadeTags:
    """The cascade's tags (docs/tags_cascade.md): every tag is prefixed with the stage name (stage_64, ...)."""

    STEP = ("train_loss_step", "train_diffusion_step", "train_physics_step")
    EPOCH = ("train_loss", "train_diffusion", "train_physics", "val_loss", "val_diffusion", "val_physics",
             "epoch_time", "learning_rate")
    PERF = PerfTags.ALL  # per epoch as {stage}/Perf/..., beyond the contract
    SKIPPED_STEPS = "skipped_steps"  # per epoch, beyond the contract: steps skipped for a non-finite loss/norm
    IMAGES = "val_samples"
    # at each sample_every epoch (with the images): the DDIM samples of the val_samples cases against their
    # ground truth (PSNR, 3D SSIM) and their DRRs against the input X-rays (MSE)
    SAMPLE_QUALITY = ("val_psnr", "val_ssim", "val_drr_mse")
    PER_EPOCH = EPOCH + PERF + (SKIPPED_STEPS,) + SAMPLE_QUALITY  # every tag on the stage's epoch axis

    @staticmethod
    def tag(stage: str, name: str) -> str:
        return f"{stage}/{name}"


def cascade_layout(stages: list[str]) -> dict:
    tag = CascadeTags.tag
    return {
        "Losses": {f"{s} train vs val": lines(tag(s, "train_loss"), tag(s, "val_loss")) for s in stages},
        "Components": {
            f"{s} diffusion vs physics": lines(*(tag(s, n) for n in ("train_diffusion", "train_physics",
                                                                       "val_diffusion", "val_physics")))
            for s in stages
        },
        "Speed and schedule": {
            "Epoch time": lines(*(tag(s, "epoch_time") for s in stages)),
            "Learning rate": lines(*(tag(s, "learning_rate") for s in stages)),
            "Skipped steps (non-finite loss or gradient norm)": lines(*(tag(s, CascadeTags.SKIPPED_STEPS) for s in stages)),
        },
        "Sample quality": {
            title: lines(*(tag(s, name) for s in stages))
            for title, name in (("DDIM sample PSNR (dB)", "val_psnr"), ("DDIM sample 3D SSIM", "val_ssim"),
                                ("DDIM sample DRR vs X-ray (MSE)", "val_drr_mse"))
        },
        "Performance": {
            title: lines(*(tag(s, name) for s in stages))
            for title, name in (("Step time (ms)", PerfTags.STEP_TIME_MS), ("Samples / s", PerfTags.SAMPLES_PER_S),
                                ("Peak memory (MiB)", PerfTags.PEAK_MEMORY_MIB))
        },
    }
