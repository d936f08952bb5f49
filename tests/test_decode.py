"""python -m hnerv_fast.decode: PNG frames that reproduce the run's PSNR, H.264 videos PyAV reads back, fractional
times between their neighbours, shifted patch positions, frame ranges, and one-line errors with exit code 2."""
from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hnerv_fast.config import load_config, to_dict
from hnerv_fast.data.patches import PatchGrid, split_frames, to_patches
from hnerv_fast.data.video import load_frames
from hnerv_fast.decode import DecodeError, FrameRange, check_extent, frame_name, main
from hnerv_fast.models.hnerv_dual import DualHNeRV
from hnerv_fast.ops import patch_psnr
from tests.event_files import scalar_series

ROOT = Path(__file__).resolve().parents[1]


def ground_truth(cfg) -> torch.Tensor:
    d = cfg.data
    return load_frames(d.source, d.path, num_frames=d.num_frames, height=d.height, width=d.width, seed=d.seed,
                       max_frames=d.max_frames, resize=tuple(d.resize) if d.resize else None)


def read_pngs(folder: Path, names: list[str]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(Image.open(folder / n))).permute(2, 0, 1) for n in names])


def frame_psnr(pred_u8: torch.Tensor, target_u8: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """Per-frame PSNR as the trainer logs it: the mean of the frame's patch PSNRs."""
    pred, target = (to_patches(x.float() / 255, grid) for x in (pred_u8, target_u8))
    return patch_psnr(pred, target).view(-1, grid.count).mean(1)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.float() - b.float()) ** 2).flatten(1).mean(1)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ------------------------------------------------------------------------------------------------ frames
def test_trained_frames_reproduce_the_runs_train_psnr(tiny_dual_run, tmp_path):
    cfg, run_folder, events = tiny_dual_run
    out = tmp_path / "png"
    assert main(["--checkpoint", str(run_folder / "latest.pt"), "--out", str(out), "--device", "cpu"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"frame_{i:05d}.png" for i in range(cfg.data.num_frames)]
    d = cfg.data
    train_ids, _ = split_frames(d.num_frames, d.split, d.shuffle, d.seed)
    decoded = read_pngs(out, [names[i] for i in train_ids])
    psnr = frame_psnr(decoded, ground_truth(cfg)[train_ids], PatchGrid(d.patch_rows, d.patch_cols)).mean()
    _, logged = scalar_series(events, "Eval/Frame/train_psnr")[-1]  # the last epoch's evaluation = latest.pt
    assert abs(float(psnr) - logged) < 0.1, (float(psnr), logged)


def test_fractional_times_lie_between_their_neighbours(tiny_dual_run, tmp_path):
    _, run_folder, _ = tiny_dual_run
    out = tmp_path / "half"
    assert main(["--checkpoint", str(run_folder / "latest.pt"), "--out", str(out), "--frames", "::0.5"]) == 0
    whole = read_pngs(out, [f"frame_{i:05d}.png" for i in range(40)])
    half = read_pngs(out, [f"frame_{i:05d}.50.png" for i in range(39)])
    assert len(list(out.iterdir())) == 79  # 0, 0.5, ..., 39: no 39.5 (the range ends at the last frame)
    to_left, to_right = mse(half, whole[:-1]), mse(half, whole[1:])
    # on average a half-time frame is closer to each neighbour than the two neighbours are to each other
    assert ((to_left + to_right) / 2).mean() < mse(whole[:-1], whole[1:]).mean()
    # and each one is closer to its two neighbours than to the frames one step further out
    inner = torch.arange(1, 38)
    near = (to_left[inner] + to_right[inner]) / 2
    far = (mse(half[inner], whole[inner - 1]) + mse(half[inner], whole[inner + 2])) / 2
    assert bool((near < far).all()), (near, far)


def test_a_whole_patch_shift_moves_the_frame_by_one_patch(tiny_dual_run, tmp_path):
    _, run_folder, _ = tiny_dual_run
    ckpt = str(run_folder / "latest.pt")
    assert main(["--checkpoint", ckpt, "--out", str(tmp_path / "base"), "--times", "5,7.25"]) == 0
    assert main(["--checkpoint", ckpt, "--out", str(tmp_path / "shift"), "--times", "5,7.25",
                 "--shift", "1,1", "--extrapolate"]) == 0
    names = ["frame_00005.png", "frame_00007.25.png"]
    base, shifted = read_pngs(tmp_path / "base", names), read_pngs(tmp_path / "shift", names)
    # patch (r, c) shifted by one patch down and right is rendered at the coordinates of patch (r + 1, c + 1)
    ph, pw = 32, 32
    diff = (shifted[:, :, :-ph, :-pw].int() - base[:, :, ph:, pw:].int()).abs().max()
    assert int(diff) <= 1  # the same coordinates; at most a rounding step from batch composition
    assert int((shifted.int() - base.int()).abs().max()) > 16  # and the frame did move


def test_mp4_reads_back_with_the_right_frames_and_size(tiny_dual_run, tmp_path):
    av = pytest.importorskip("av")
    _, run_folder, _ = tiny_dual_run
    ckpt = str(run_folder / "latest.pt")
    video, pngs = tmp_path / "sub" / "clip.mp4", tmp_path / "png"
    assert main(["--checkpoint", ckpt, "--out", str(video), "--frames", "3:13", "--fps", "10",
                 "--batch-size", "3"]) == 0
    assert main(["--checkpoint", ckpt, "--out", str(pngs), "--frames", "3:13"]) == 0
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        rate = container.streams.video[0].average_rate
    assert len(frames) == 10 and frames[0].shape == (64, 128, 3) and rate == 10
    reference = read_pngs(pngs, [f"frame_{i:05d}.png" for i in range(3, 13)])
    decoded = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    psnr = -10 * torch.log10(mse(decoded / 255, reference / 255))
    assert float(psnr.min()) > 30  # the same frames, in order, through H.264 at crf 17
    assert not list(video.parent.glob(".*partial"))


def test_mp4_of_odd_sized_frames_is_padded_to_even(tmp_path, capsys):
    av = pytest.importorskip("av")
    cfg = load_config("configs/dual_hnerv_tiny.yaml", [
        "data.height=15", "data.width=21", "data.num_frames=4", "data.patch_rows=1", "data.patch_cols=1",
        "model.fc_hw=[5,7]", "model.dec_strds=[3]"])
    model = DualHNeRV(cfg.model, clip_dim=8)  # untrained: only the geometry matters here
    ckpt = tmp_path / "odd.pt"
    torch.save({"config": to_dict(cfg), "video": {"num_frames": 4, "height": 15, "width": 21},
                "model_state_dict": model.state_dict()}, ckpt)
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "odd.mp4")]) == 0
    assert "padded from 15x21" in capsys.readouterr().out
    with av.open(str(tmp_path / "odd.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (16, 22, 3)


# ------------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("spec, expected", [
    (":", list(range(40))),
    ("0:10:3", [0, 3, 6, 9]),
    ("0:3:0.5", [0, 0.5, 1, 1.5, 2, 2.5]),
    ("-3:", [37, 38, 39]),
    ("0:-37", [0, 1, 2]),
    ("12", [12]),
    ("38::0.25", [38, 38.25, 38.5, 38.75, 39]),
    ("0:1:0.1", [Fraction(k, 10) for k in range(10)]),  # exact: no 0.30000000000000004 drift
])
def test_frame_ranges_are_python_slices_with_fractional_steps(spec, expected):
    assert FrameRange.parse(spec).times(40) == [Fraction(v) for v in expected]


def test_the_trained_extent_is_inclusive():
    """Times 0 .. num_frames - 1 and shifts up to half a patch (centres on the frame's edge) need no
    --extrapolate; anything beyond does."""
    check_extent([Fraction(0), Fraction(39)], (0.5, -0.5), 40, extrapolate=False)
    for times, shift in (([Fraction(-1, 100)], (0.0, 0.0)), ([Fraction(3901, 100)], (0.0, 0.0)),
                         ([Fraction(1)], (0.0, 0.501)), ([Fraction(1)], (-0.501, 0.0))):
        with pytest.raises(DecodeError, match="--extrapolate"):
            check_extent(times, shift, 40, extrapolate=False)
        check_extent(times, shift, 40, extrapolate=True)


def test_frame_names_show_fractional_times():
    assert frame_name(Fraction(12)) == "frame_00012.png"
    assert frame_name(Fraction(25, 2)) == "frame_00012.50.png"
    assert frame_name(Fraction(97, 8)) == "frame_00012.125.png"
    assert frame_name(Fraction(-1, 2)) == "frame_-00000.50.png"


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("args, message", [
    (["--frames", "0:x"], "'x' is not a number"),
    (["--frames", "0:10:0"], "STEP must be > 0"),
    (["--frames", "1:2:3:4"], "at most two ':'"),
    (["--frames", "5:5"], "selects no frame time"),
    (["--frames", "0:41"], "frame time 40 is outside the trained frames [0, 39]"),
    (["--times", "3,-1"], "frame time -1 is outside"),
    (["--shift", "0.6,0"], "add --extrapolate"),
    (["--shift", "0.5"], "expected DY,DX"),
    (["--fps", "0"], "--fps must be a number > 0"),
    (["--times", "1,2,1"], "frame times 1.0 and 1.0 would both be written as frame_00001.png"),
    (["--times", "1.0000001,1.0000002"], "would both be written as frame_00001.00.png"),
])
def test_bad_arguments_exit_2_with_one_line(tiny_dual_run, tmp_path, capsys, args, message):
    _, run_folder, _ = tiny_dual_run
    out = tmp_path / "never"
    assert main(["--checkpoint", str(run_folder / "latest.pt"), "--out", str(out), *args]) == 2
    assert message in one_error_line(capsys)
    assert not out.exists()


def test_bad_checkpoints_and_outputs_exit_2_with_one_line(tiny_dual_run, tmp_path, capsys):
    _, run_folder, _ = tiny_dual_run
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in one_error_line(capsys)
    cascade = tmp_path / "stage_32_final.pt"
    torch.save({"config": {"task": "cascade"}, "model_state_dict": {}}, cascade)
    assert main(["--checkpoint", str(cascade), "--out", str(tmp_path / "o")]) == 2
    assert "'cascade' checkpoint, not a dual_hnerv one" in one_error_line(capsys)
    assert main(["--checkpoint", str(run_folder / "latest.pt"), "--out", str(tmp_path / "x.mkv")]) == 2
    assert "only .mp4" in one_error_line(capsys)
    (tmp_path / "afile").write_text("")  # a file where a folder should be
    for out in ("afile/frames", "afile/v.mp4"):
        assert main(["--checkpoint", str(run_folder / "latest.pt"), "--out", str(tmp_path / out)]) == 2, out
        assert f"cannot write {tmp_path / out}" in one_error_line(capsys)


def test_cli_help_and_error_through_python_dash_m(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "hnerv_fast.decode", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
    assert help_text.returncode == 0 and "--frames START:STOP[:STEP]" in help_text.stdout
    proc = subprocess.run([sys.executable, "-m", "hnerv_fast.decode", "--checkpoint", str(tmp_path / "none.pt"),
                           "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
