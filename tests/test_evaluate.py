"""python -m hnerv_fast.evaluate: the tiny run's numbers as its trainer logged them, the files' contents (rows,
split labels, metrics recomputed independently), the fractional positions, the plot, bad input."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hnerv_fast.data.video import load_frames
from hnerv_fast.evaluate import main
from hnerv_fast.inference.dual import load_trained_dual
from hnerv_fast.inference.plots import SPLIT_COLOURS
from hnerv_fast.ops import reference
from tests.event_files import scalar_series

ROOT = Path(__file__).resolve().parents[1]
VAL_FRAMES = {9, 19, 29, 39}  # data_split 9_9_10 on 40 frames: every 10th frame validates


@pytest.fixture(scope="module")
def evaluated(tiny_dual_run, tmp_path_factory):
    """The tiny run's latest.pt evaluated with --fractional; the CLIP targets come from the run's own cache."""
    cfg, run_folder, events = tiny_dual_run
    out = tmp_path_factory.mktemp("evaluate")
    assert main(["--checkpoint", str(run_folder / "latest.pt"), "--out", str(out), "--fractional",
                 "--device", "cpu"]) == 0
    return run_folder, events, out, json.loads((out / "summary.json").read_text())


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def truth(evaluated):
    """The run's model in float32 and its ground-truth frames in [0, 1], for recomputing single values."""
    run_folder = evaluated[0]
    model = load_trained_dual(run_folder / "latest.pt", torch.device("cpu"))
    d = model.cfg.data
    frames = load_frames(d.source, d.path, num_frames=d.num_frames, height=d.height, width=d.width, seed=d.seed)
    return model, frames.float() / 255.0


def test_frame_means_match_the_runs_last_evaluation(evaluated):
    _, events, _, summary = evaluated
    for split in ("train", "val"):
        epoch, logged_psnr = scalar_series(events, f"Eval/Frame/{split}_psnr")[-1]
        _, logged_sim = scalar_series(events, f"Eval/Frame/{split}_clip_sim")[-1]
        assert epoch == 30  # the last epoch of the tiny config: latest.pt holds these weights
        entry = summary["splits"][split]
        assert abs(entry["frame_psnr_mean"] - logged_psnr) < 0.05, (split, entry["frame_psnr_mean"], logged_psnr)
        assert abs(entry["clip_sim_mean"] - logged_sim) < 0.01, (split, entry["clip_sim_mean"], logged_sim)
        _, logged_std = scalar_series(events, f"Eval/PSNR_Stats/{split}_std")[-1]
        assert abs(entry["frame_psnr_std"] - logged_std) < 0.05


def test_csv_rows_and_split_labels(evaluated):
    _, _, out, summary = evaluated
    frames, patches = read_csv(out / "frames.csv"), read_csv(out / "patches.csv")
    assert [int(r["frame"]) for r in frames] == list(range(40))
    assert {int(r["frame"]) for r in frames if r["split"] == "val"} == VAL_FRAMES
    assert {r["split"] for r in frames} == {"train", "val"}
    assert len(patches) == 40 * 8
    assert [(int(r["frame"]), int(r["row"]), int(r["col"])) for r in patches[8:16]] == \
        [(1, r, c) for r in range(2) for c in range(4)]
    assert all(p["split"] == ("val" if int(p["frame"]) in VAL_FRAMES else "train") for p in patches)
    for frame in frames:  # frame PSNR / CLIP similarity = the mean over its 8 patches
        mine = [p for p in patches if p["frame"] == frame["frame"]]
        assert float(frame["psnr"]) == pytest.approx(np.mean([float(p["psnr"]) for p in mine]), abs=1e-5)
        assert float(frame["clip_sim"]) == pytest.approx(np.mean([float(p["clip_sim"]) for p in mine]), abs=1e-5)
        assert 0 < float(frame["ms_ssim"]) <= 1 and 0 < float(frame["ssim"]) <= 1
    assert summary["splits"]["train"]["frames"] == 36 and summary["splits"]["train"]["patches"] == 288
    assert summary["splits"]["val"]["frames"] == 4 and summary["splits"]["val"]["patches"] == 32
    assert summary["ms_ssim_scales"] == {"patch": 2, "frame": 3}  # 32x32 patches, 64x128 frames (11-px window)
    assert summary["precision"] == "float32" and summary["grid"] == [2, 4]


def test_patch_and_frame_values_recomputed(evaluated, truth):
    _, _, out, _ = evaluated
    model, frames = truth
    row = next(r for r in read_csv(out / "patches.csv") if (r["frame"], r["row"], r["col"]) == ("5", "1", "2"))
    rgb, _ = model.predict(model.coords(torch.tensor([5])))
    pred, target = rgb[1 * 4 + 2][None], frames[5, :, 32:64, 64:96][None]
    assert float(row["psnr"]) == pytest.approx(reference.psnr(pred, target).item(), abs=1e-4)
    assert float(row["ssim"]) == pytest.approx(reference.ssim_per_sample(pred, target).item(), abs=1e-5)
    assert float(row["ms_ssim"]) == pytest.approx(reference.ms_ssim_per_sample(pred, target).item(), abs=1e-5)
    frame_row = read_csv(out / "frames.csv")[5]
    whole = model.frames(torch.tensor([5]))
    assert float(frame_row["ms_ssim"]) == pytest.approx(
        reference.ms_ssim_per_sample(whole, frames[5:6]).item(), abs=1e-5)


def test_fractional_positions(evaluated, truth):
    _, _, out, summary = evaluated
    model, frames = truth
    rows = read_csv(out / "fractional.csv")
    per_frame = {c: sum(1 for r in rows if r["category"] == c and r["frame"] == "0")
                 for c in ("centre", "middle_h", "middle_v", "corner")}
    assert per_frame == {"centre": 8, "middle_h": 2 * 3, "middle_v": 1 * 4, "corner": 1 * 3}
    assert len(rows) == 40 * 21
    # between patches (1, 2) and (1, 3) of frame 5: the crop 16 px right of patch (1, 2), centred at x = 3/4 W
    row = next(r for r in rows if (r["frame"], r["category"], r["row"], r["col"]) == ("5", "middle_h", "1", "2"))
    assert (float(row["cx"]), float(row["cy"])) == (0.75, 0.75)
    rgb, _ = model.predict(model.coords(torch.tensor([5]), shift=(0.0, 0.5)))
    target = frames[5, :, 32:64, 80:112][None]
    assert float(row["psnr"]) == pytest.approx(reference.psnr(rgb[6][None], target).item(), abs=1e-4)
    fractional = summary["fractional"]
    assert fractional["centre"]["train"]["psnr_mean"] == pytest.approx(
        summary["splits"]["train"]["patch_psnr_mean"])
    assert fractional["middle_h"]["val"]["positions"] == 4 * 6
    for category in ("middle_h", "middle_v", "corner"):
        # the tiny model has seen 4 x 2 patch positions only; between them it does not interpolate (~17 dB lower)
        assert fractional[category]["train"]["psnr_drop_db"] > 3.0, (category, fractional[category])


def test_frames_in_neither_split_are_left_out(tiny_dual_run, tmp_path):
    """A split with gap frames (8_9_10: frames 8, 18, ... train nothing and validate nothing) evaluates only the
    run's training and validation frames. (The tiny run's weights under that split's config.)"""
    _, run_folder, _ = tiny_dual_run
    state = torch.load(run_folder / "latest.pt", weights_only=True)
    state["config"]["data"]["data_split"] = "8_9_10"
    torch.save(state, tmp_path / "gaps.pt")
    assert main(["--checkpoint", str(tmp_path / "gaps.pt"), "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    rows = read_csv(tmp_path / "eval" / "frames.csv")
    assert [int(r["frame"]) for r in rows] == [f for f in range(40) if f % 10 != 8]
    assert {int(r["frame"]) for r in rows if r["split"] == "val"} == VAL_FRAMES


def test_psnr_plot_marks_both_splits(evaluated):
    out = evaluated[2]
    image = np.asarray(Image.open(out / "psnr_per_frame.png").convert("RGB"))
    assert image.shape == (420, 900, 3)
    for split in ("train", "val"):
        painted = (image == np.array(SPLIT_COLOURS[split], dtype=np.uint8)).all(axis=-1).sum()
        assert painted > 20, split  # the markers and the legend swatch


@pytest.mark.parametrize("case", ["missing", "cascade", "out_is_file", "batch_size", "device"])
def test_bad_input_is_one_line_exit_2(tiny_dual_run, tmp_path, capsys, case):
    latest = str(tiny_dual_run[1] / "latest.pt")
    args = {"missing": ["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")],
            "cascade": ["--checkpoint", str(tmp_path / "stage.pt"), "--out", str(tmp_path / "o")],
            "out_is_file": ["--checkpoint", latest, "--out", str(tmp_path / "file.txt")],
            "batch_size": ["--checkpoint", latest, "--out", str(tmp_path / "o"), "--batch-size", "0"],
            "device": ["--checkpoint", latest, "--out", str(tmp_path / "o"), "--device", "cuda:99"]}[case]
    torch.save({"config": {"task": "cascade"}, "model_state_dict": {}}, tmp_path / "stage.pt")
    (tmp_path / "file.txt").write_text("x")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    expected = {"missing": "not found", "cascade": "'cascade' checkpoint", "out_is_file": "not a folder",
                "batch_size": "--batch-size", "device": "--device=cuda:99"}[case]
    assert expected in err[0]
    assert not (tmp_path / "o").exists()


def test_help():
    proc = subprocess.run([sys.executable, "-m", "hnerv_fast.evaluate", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--fractional" in proc.stdout and "--clip-cache" in proc.stdout
