"""End-to-end dual-head HNeRV runs: the TensorBoard contract read back from event files, resume,
bad input, and that the tiny config actually learns."""
from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hnerv_fast.config import load_config
from hnerv_fast.data.video import load_frames
from hnerv_fast.logging.layouts import DualTags as T
from hnerv_fast.train import checkpoint as ckpt
from hnerv_fast.train.trainer import run, run_from_args
from hnerv_fast.train.tasks.dual_hnerv import run_dir
from tests.conftest import TINY, overrides
from tests.event_files import custom_scalar_layout, load_events, scalar_series

ROOT = Path(__file__).resolve().parents[1]


def steps(acc, tag):
    return [s for s, _ in scalar_series(acc, tag)]


def values(acc, tag):
    return [v for _, v in scalar_series(acc, tag)]


def test_every_contract_tag_is_written(tiny_dual_run):
    _, _, acc = tiny_dual_run
    tags = acc.Tags()
    missing = [t for t in T.SCALARS if t not in tags["scalars"]]
    assert not missing, f"missing scalar tags: {missing}"
    missing = [t for t in T.HISTOGRAMS if t not in tags["histograms"]]
    assert not missing, f"missing histograms: {missing}"
    assert any(t.startswith(T.IMAGES_PREFIX + "/") for t in tags["images"])


def test_cadence_per_batch_epoch_params_eval(tiny_dual_run):
    cfg, out, acc = tiny_dual_run
    t = cfg.train
    epochs = t.epochs
    train_frames = 36
    steps_per_epoch = train_frames * 8 // t.batch_size
    for tag in T.BATCH:
        assert steps(acc, tag) == list(range(1, epochs * steps_per_epoch + 1)), tag
    for tag in T.EPOCH:
        assert steps(acc, tag) == list(range(1, epochs + 1)), tag
    for tag in T.PARAMS:
        assert steps(acc, tag) == list(range(t.params_every, epochs + 1, t.params_every)), tag
    eval_epochs = sorted({e for e in range(1, epochs + 1) if e % t.eval_freq == 0} | {epochs, epochs - 2, epochs - 4})
    for tag in T.EVAL:
        assert steps(acc, tag) == eval_epochs, tag
    for tag in T.HISTOGRAMS:
        assert [h.step for h in acc.Histograms(tag)] == eval_epochs, tag


def test_clip_warmup_and_loss_identities(tiny_dual_run):
    cfg, _, acc = tiny_dual_run
    warmup, lam = cfg.loss.pixel_loss_warmup_epochs, cfg.loss.clip_weight
    active = values(acc, T.CLIP_ACTIVE)
    assert active == [0.0] * warmup + [1.0] * (cfg.train.epochs - warmup)
    clip, weighted = values(acc, T.CLIP_LOSS), values(acc, T.CLIP_LOSS_WEIGHTED)
    pixel, total = values(acc, T.PIXEL_LOSS), values(acc, T.TOTAL_LOSS)
    assert all(c == 0.0 for c in clip[:warmup]) and all(c > 0 for c in clip[warmup:])
    for c, w, p, tot in zip(clip, weighted, pixel, total):
        assert w == pytest.approx(lam * c, rel=1e-5, abs=1e-9)
        assert tot == pytest.approx(p + lam * c, rel=1e-5)
    ratio = values(acc, T.PIXEL_TO_CLIP)
    assert all(r == 0.0 for r in ratio[:warmup])
    assert ratio[-1] == pytest.approx(pixel[-1] / clip[-1], rel=1e-4)
    # the CLIP head gets no gradient while its loss is off
    clip_norms = values(acc, T.GRAD_CLIP)
    assert all(n == 0.0 for n in clip_norms[:warmup]) and all(n > 0 for n in clip_norms[warmup:])
    assert values(acc, T.GRAD_RGB_TO_CLIP)[:warmup] == [0.0] * warmup
    batch_clip = values(acc, T.BATCH_CLIP)
    assert batch_clip[0] == 0.0 and batch_clip[-1] > 0


def test_gradient_norms_are_consistent(tiny_dual_run):
    _, _, acc = tiny_dual_run
    total = values(acc, T.GRAD_TOTAL)
    parts = zip(values(acc, T.GRAD_DECODER), values(acc, T.GRAD_RGB), values(acc, T.GRAD_CLIP))
    # per step total² = Σ group²; epoch means of norms satisfy total ≤ Σ groups and total ≥ max group
    for tot, (d, r, c) in zip(total, parts):
        assert max(d, r, c) <= tot * (1 + 1e-5) and tot <= (d + r + c) * (1 + 1e-5)


def test_eval_gap_and_info(tiny_dual_run):
    _, _, acc = tiny_dual_run
    train_psnr, val_psnr = values(acc, "Eval/Frame/train_psnr"), values(acc, "Eval/Frame/val_psnr")
    for g, tr, va in zip(values(acc, "Eval/Gap/psnr_gap"), train_psnr, val_psnr):
        assert g == pytest.approx(tr - va, abs=1e-4)
    for g, tr, va in zip(values(acc, "Eval/Gap/clip_sim_gap"), values(acc, "Eval/Frame/train_clip_sim"),
                         values(acc, "Eval/Frame/val_clip_sim")):
        assert g == pytest.approx(tr - va, abs=1e-5)
    for d, s in zip(values(acc, "Eval/Frame/val_clip_dist"), values(acc, "Eval/Frame/val_clip_sim")):
        assert d == pytest.approx(1 - s, abs=1e-6)
    assert set(values(acc, "Eval/Info/num_train_frames")) == {36.0}
    assert set(values(acc, "Eval/Info/num_val_frames")) == {4.0}
    assert set(values(acc, "Eval/Info/num_train_patches")) == {36.0 * 8}
    assert set(values(acc, "Eval/Info/num_val_patches")) == {4.0 * 8}
    for lo, mid, hi in zip(values(acc, "Eval/PSNR_Stats/val_min"), val_psnr, values(acc, "Eval/PSNR_Stats/val_max")):
        assert lo <= mid <= hi


def test_learning_rate_follows_the_schedule(tiny_dual_run):
    cfg, _, acc = tiny_dual_run
    lrs = values(acc, T.LR)
    peak = max(lrs)
    assert peak <= cfg.train.lr * (1 + 1e-6)
    assert lrs[-1] < 0.05 * cfg.train.lr  # cosine decays to ~0 at the end
    assert lrs.index(peak) < len(lrs) // 2
    # exactly the lr of each epoch's last step (read from the optimizer), by HNeRV's cosine_0.1_1_0.1 written
    # out here: linear warm-up from 0.1 over the first 10 % of training, then a half cosine to 0
    steps, epochs = 36 * 8 // cfg.train.batch_size, cfg.train.epochs
    assert cfg.train.lr_schedule == "cosine_0.1_1_0.1"
    for epoch, logged in enumerate(lrs, start=1):
        p = (epoch - 1 + (steps - 1) / steps) / epochs
        mult = 0.1 + 0.9 * p / 0.1 if p < 0.1 else 0.5 * (1 + math.cos(math.pi * (p - 0.1) / 0.9))
        assert logged == pytest.approx(cfg.train.lr * mult, rel=1e-5), epoch


def test_custom_scalars_layout_has_the_guide_categories_and_performance(tiny_dual_run):
    _, _, acc = tiny_dual_run
    layout = custom_scalar_layout(acc)
    assert list(layout) == ["Overview", "Loss Breakdown", "Gradients", "Evaluation", "Statistics", "Distributions",
                            "Performance"]
    assert all(layout[c] for c in layout)


def test_tiny_config_learns(tiny_dual_run):
    _, _, acc = tiny_dual_run
    psnr = values(acc, T.TRAIN_PSNR)
    assert psnr[-1] - psnr[0] >= 5.0, psnr


def test_checkpoints_and_config_written(tiny_dual_run):
    cfg, out, acc = tiny_dual_run
    assert (out / "config.yaml").is_file()
    latest, best = ckpt.load(out / "latest.pt"), ckpt.load(out / "best.pt")
    assert latest["epoch"] == cfg.train.epochs
    assert latest["config"]["loss"]["pixel"] == cfg.loss.pixel
    assert set(latest) >= {"model_state_dict", "optimizer_state_dict", "epoch", "rng", "config", "global_step"}
    val_psnr = dict(scalar_series(acc, "Eval/Frame/val_psnr"))  # best.pt: the best validation frame PSNR
    assert best["epoch"] == max(val_psnr, key=val_psnr.get)
    assert best["best_score"] == pytest.approx(val_psnr[best["epoch"]], abs=1e-4)
    assert not list(out.glob("*.tmp"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_defaults_on_one_gpu_train_with_cuda_graphs(tmp_path, clip_cache, monkeypatch):
    """What a user on one GPU gets from the defaults (`train.compile=auto`: the whole step as one CUDA graph;
    `amp=auto`): the step is captured, and the run ends with every epoch's tags finite, the model learning,
    evaluations written and checkpoints that load."""
    from hnerv_fast.train.step_graph import StepGraph

    captures = []
    capture = StepGraph._capture
    monkeypatch.setattr(StepGraph, "_capture", lambda self, batches: captures.append(1) or capture(self, batches))
    cfg = load_config(TINY, overrides(tmp_path, clip_cache, "train.device=cuda", "train.epochs=6",
                                      "loss.pixel_loss_warmup_epochs=2"))  # the CLIP loss switches on too
    out = run(cfg)
    assert captures == [1], "the default GPU run did not capture its step as one CUDA graph"
    acc = load_events(out / "tensorboard")
    for tag in (T.TRAIN_PSNR, T.TOTAL_LOSS, T.GRAD_TOTAL, T.LR):
        assert steps(acc, tag) == list(range(1, 7)) and all(math.isfinite(v) for v in values(acc, tag)), tag
    assert values(acc, T.TRAIN_PSNR)[-1] > values(acc, T.TRAIN_PSNR)[0] + 3.0  # 14.9 -> 21.4 dB on a CPU
    assert 6 in steps(acc, "Eval/Frame/val_psnr")
    assert ckpt.load(out / "latest.pt")["epoch"] == 6 and (out / "best.pt").is_file()


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return ckpt.load(out / "latest.pt")["model_state_dict"]


def test_resume_continues_exactly(tmp_path, clip_cache):
    common = ["train.epochs=4", "loss.pixel_loss_warmup_epochs=1", "train.eval_freq=2", "train.deterministic=true"]
    straight = run(load_config(TINY, overrides(tmp_path / "a", clip_cache, *common)))
    first = load_config(TINY, overrides(tmp_path / "b", clip_cache, *common, "train.stop_after=2"))
    part = run(first)
    assert ckpt.load(part / "latest.pt")["epoch"] == 2
    resumed = run(load_config(TINY, overrides(tmp_path / "b", clip_cache, *common)), resume="latest")
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # optimizer state (Adam moments, step counts) identical too
    opt_a = ckpt.load(straight / "latest.pt")["optimizer_state_dict"]["state"]
    opt_b = ckpt.load(resumed / "latest.pt")["optimizer_state_dict"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for index in opt_a:
        for name, value in opt_a[index].items():
            assert torch.equal(value, opt_b[index][name]), (index, name)
    # the resumed run's event files continue the same step numbering, and what it logs after the resume
    # (epochs 3-4, per-batch steps after epoch 2) equals the uninterrupted run's values
    acc, acc_straight = load_events(resumed / "tensorboard"), load_events(straight / "tensorboard")
    assert steps(acc, T.TRAIN_PSNR) == [1, 2, 3, 4]
    for tag in (T.TRAIN_PSNR, T.TOTAL_LOSS, T.LR, T.GRAD_TOTAL, T.BATCH_TOTAL, "Eval/Frame/val_psnr"):
        after = [(s, v) for s, v in scalar_series(acc, tag) if s > (2 if tag != T.BATCH_TOTAL else 2 * 9)]
        want = [(s, v) for s, v in scalar_series(acc_straight, tag) if s in dict(after)]
        assert after and after == want, tag


# ------------------------------------------------------------------------------- bad input
def _assert_clean_failure(code, capsys, pattern, out_dir: Path):
    """Exit 2 with one line naming the problem, and no file written (no checkpoint, config.yaml or event file)."""
    assert code == 2
    err = capsys.readouterr().err
    assert pattern in err and "Traceback" not in err, err
    assert not [p for p in out_dir.rglob("*") if p.is_file()] if out_dir.exists() else True


def test_unknown_config_key_via_cli(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hnerv_fast.train", "--config", TINY, "train.epochz=2", f"output.output_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "train.epochz" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("*.pt"))


def test_decoder_output_not_patch_size(tmp_path, clip_cache, capsys):
    code = run_from_args(TINY, overrides(tmp_path, clip_cache, "model.dec_strds=[2,2]"), None)
    _assert_clean_failure(code, capsys, "model.fc_hw / model.dec_strds", tmp_path / "out")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(tmp_path, clip_cache, capsys):
    code = run_from_args(TINY, overrides(tmp_path, clip_cache, "train.device=cuda"), None)
    _assert_clean_failure(code, capsys, "train.device=cuda but no CUDA device is available", tmp_path / "out")


def test_empty_frame_folder(tmp_path, clip_cache, capsys):
    empty = tmp_path / "frames"
    empty.mkdir()
    code = run_from_args(TINY, overrides(tmp_path, clip_cache, "data.source=folder", f"data.path={empty}"), None)
    _assert_clean_failure(code, capsys, str(empty), tmp_path / "out")


def test_missing_clip_checkpoint(tmp_path, capsys):
    missing = tmp_path / "no_such_clip.pt"
    code = run_from_args(TINY, overrides(tmp_path, tmp_path / "cache", f"clip.pretrained={missing}"), None)
    _assert_clean_failure(code, capsys, str(missing), tmp_path / "out")


def test_missing_resume_checkpoint(tmp_path, clip_cache, capsys):
    code = run_from_args(TINY, overrides(tmp_path, clip_cache, "train.epochs=2", "loss.pixel_loss_warmup_epochs=1"), "latest")
    _assert_clean_failure(code, capsys, "checkpoint not found", tmp_path / "out")


@pytest.mark.parametrize("change, pattern", [
    ("data.num_frames=20", "data.num_frames was 40, now 20"),
    ("model.fc_dim=32", "model.fc_dim was"),
])
def test_resume_with_another_model_or_data_is_refused(tiny_dual_run, tmp_path, clip_cache, capsys, change, pattern):
    """A resumed run trains the same model on the same frames: checked before the CLIP targets, one line."""
    latest = tiny_dual_run[1] / "latest.pt"
    code = run_from_args(TINY, overrides(tmp_path, tmp_path / "fresh_clip", change), str(latest))
    _assert_clean_failure(code, capsys, f"cannot resume from {latest}: {pattern}", tmp_path / "out")
    assert not (tmp_path / "fresh_clip").exists()


def test_a_checkpoint_that_does_not_fit_the_model_is_one_error(tmp_path, clip_cache):
    from tests.hot_loop import dual_engine

    _, engine = dual_engine(tmp_path, torch.device("cpu"))
    state = engine.state(1)
    state["model_state_dict"] = {k: v[..., :1] for k, v in state["model_state_dict"].items()}  # wrong shapes
    with pytest.raises(ckpt.CheckpointError, match=r"cannot resume from x\.pt \(does the config still match"):
        engine.resume(state, "from x.pt")
    del state["rng"]  # a checkpoint missing a part
    state["model_state_dict"] = engine.task.model.state_dict()
    with pytest.raises(ckpt.CheckpointError, match=r"cannot resume from x\.pt .*'rng'"):
        engine.resume(state, "from x.pt")


def test_run_dir_layout(tmp_path, clip_cache):
    cfg = load_config(TINY, overrides(tmp_path, clip_cache))
    assert run_dir(cfg).relative_to(tmp_path / "out").parts[0] == "tiny"


def test_eval_images_are_target_above_prediction(tiny_dual_run):
    """`Eval/Images/<split>_frame<N>_target_vs_pred`: the ground-truth frame N on top, the prediction below."""
    cfg, _, acc = tiny_dual_run
    d = cfg.data
    frames = load_frames(d.source, d.path, num_frames=d.num_frames, height=d.height, width=d.width, seed=d.seed,
                         max_frames=d.max_frames)
    height = frames.shape[2]
    for tag, frame in (("Eval/Images/train_frame0_target_vs_pred", 0), ("Eval/Images/val_frame9_target_vs_pred", 9)):
        image = np.asarray(Image.open(io.BytesIO(acc.Images(tag)[-1].encoded_image_string)).convert("RGB"))
        truth = frames[frame].permute(1, 2, 0).numpy().astype(np.int16)
        assert image.shape == (2 * height, frames.shape[3], 3)
        assert np.abs(image[:height].astype(np.int16) - truth).max() <= 1, tag  # 8-bit rounding only
        assert np.abs(image[height:].astype(np.int16) - truth).mean() > 1, tag  # a prediction, not the frame


def test_eval_std_is_the_population_std_of_the_frame_psnrs(tiny_dual_run):
    """np.std (ddof=0) as the published trainer: checked against the frame-PSNR histogram's own moments."""
    _, _, acc = tiny_dual_run
    for split in ("train", "val"):
        stds = dict(scalar_series(acc, f"Eval/PSNR_Stats/{split}_std"))
        for event in acc.Histograms(f"Eval/Histogram/{split}_psnr_distribution"):
            h = event.histogram_value
            population = math.sqrt(max(h.sum_squares / h.num - (h.sum / h.num) ** 2, 0.0))
            assert math.isclose(stds[event.step], population, rel_tol=1e-3, abs_tol=1e-4), (split, event.step)


def test_tiny_run_is_healthy_where_it_should_be(tiny_dual_run):
    """The tiny run generalises (no overfitting) and its gradients are sane; the warnings it does have are
    also logged as TensorBoard text."""
    from hnerv_fast.health import check_logdir

    _, out, acc = tiny_dual_run
    (report,) = check_logdir(out / "tensorboard")
    tags = {w.tag for w in report.warnings}
    assert not tags & {"Eval/Gap/psnr_gap", T.GRAD_TOTAL, T.TOTAL_LOSS}, report.warnings
    if report.warnings:
        assert "Health/warnings/text_summary" in acc.Tags()["tensors"]
