"""Frame sources: synthetic generator, image folders, video files, dispatch and errors."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from hnerv_fast.data.video import (
    DataError,
    load_frame_folder,
    load_frames,
    load_video_file,
    resize_frames,
    synthetic_video,
)


def _write_pngs(folder, frames: torch.Tensor, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        name = names[i] if names else f"frame_{i:04d}.png"
        Image.fromarray(f.permute(1, 2, 0).numpy()).save(folder / name)


# ------------------------------------------------------------------ synthetic
def test_synthetic_shape_dtype_deterministic():
    a = synthetic_video(12, 32, 64, seed=3)
    b = synthetic_video(12, 32, 64, seed=3)
    c = synthetic_video(12, 32, 64, seed=4)
    assert a.shape == (12, 3, 32, 64) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_synthetic_varies_over_time_smoothly_and_has_content():
    v = synthetic_video(40, 64, 128, seed=0).float() / 255
    step = (v[1:] - v[:-1]).abs().mean(dim=(1, 2, 3))
    far = (v[20] - v[0]).abs().mean()
    assert bool((step > 1e-3).all()), "every frame must differ from the previous one"
    assert step.max() < far / 3, "neighbouring frames must be much closer than distant ones"
    # a middle frame is close to the average of its neighbours (val frames are interpolations)
    mse = ((v[:-2] + v[2:]) / 2 - v[1:-1]).pow(2).mean()
    assert -10 * torch.log10(mse) > 30
    # not flat: spatial variation and colour
    assert v.std() > 0.1
    assert (v[:, 0] - v[:, 1]).abs().mean() > 0.02


def test_synthetic_bad_args():
    with pytest.raises(DataError, match="num_frames"):
        synthetic_video(0, 16, 16)
    with pytest.raises(DataError, match="height"):
        synthetic_video(4, -1, 16)


# ------------------------------------------------------------------ folder
def test_folder_round_trip_sorted(tmp_path):
    frames = synthetic_video(5, 16, 24, seed=1)
    # written out of order, with a non-padded name to check natural sort (2 < 10)
    names = ["f_1.png", "f_2.png", "f_10.PNG", "f_11.png", "f_20.png"]
    _write_pngs(tmp_path / "vid", frames, names=names)
    (tmp_path / "vid" / "notes.txt").write_text("ignored")
    got = load_frame_folder(tmp_path / "vid")
    assert got.dtype == torch.uint8 and got.shape == (5, 3, 16, 24)
    assert torch.equal(got, frames)
    assert torch.equal(load_frame_folder(str(tmp_path / "vid"), max_frames=2), frames[:2])


def test_folder_jpeg_and_rgba_converted(tmp_path):
    d = tmp_path / "jpg"
    d.mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(d / "a.jpg", quality=95)
    Image.fromarray(np.full((8, 8, 4), 100, np.uint8), mode="RGBA").save(d / "b.png")
    Image.fromarray(np.full((8, 8), 50, np.uint8), mode="L").save(d / "c.jpeg")
    got = load_frame_folder(d)
    assert got.shape == (3, 3, 8, 8)
    assert abs(int(got[0].float().mean()) - 200) <= 2
    assert int(got[2, 1, 0, 0]) == 50


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="missing_dir"):
        load_frame_folder(tmp_path / "missing_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_frame_folder(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    _write_pngs(mixed, synthetic_video(2, 16, 16), names=["a.png", "b.png"])
    _write_pngs(mixed, synthetic_video(1, 8, 16), names=["c.png"])
    with pytest.raises(DataError, match="c.png"):
        load_frame_folder(mixed)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="x.png"):
        load_frame_folder(bad)
    assert issubclass(DataError, ValueError)


# ------------------------------------------------------------------ video file
def _write_mp4(path, frames: torch.Tensor) -> None:
    av = pytest.importorskip("av")
    try:
        with av.open(str(path), mode="w") as c:
            s = c.add_stream("libx264", rate=10)
            s.width, s.height = frames.shape[-1], frames.shape[-2]
            s.pix_fmt = "yuv444p"
            s.options = {"crf": "0", "preset": "ultrafast"}
            for f in frames:
                vf = av.VideoFrame.from_ndarray(f.permute(1, 2, 0).contiguous().numpy(), format="rgb24")
                for pkt in s.encode(vf):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
    except Exception as e:  # no libx264 in this PyAV build
        pytest.skip(f"PyAV cannot write an mp4 here: {e}")


def test_video_file_round_trip(tmp_path):
    frames = synthetic_video(6, 32, 48, seed=2)
    path = tmp_path / "clip.mp4"
    _write_mp4(path, frames)
    got = load_video_file(path)
    assert got.shape == frames.shape and got.dtype == torch.uint8
    # lossless-ish (yuv444, crf 0) but colour conversion rounds: allow small error
    assert (got.float() - frames.float()).abs().mean() < 3.0
    assert load_video_file(str(path), max_frames=4).shape[0] == 4
    assert torch.equal(load_frames("video", str(path), max_frames=3), got[:3])


def test_video_file_errors(tmp_path):
    with pytest.raises(DataError, match="nope.mp4"):
        load_video_file(tmp_path / "nope.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="junk.mp4"):
        load_video_file(junk)


# ------------------------------------------------------------------ dispatch
def test_load_frames_dispatch_and_resize(tmp_path):
    syn = load_frames("synthetic", num_frames=4, height=32, width=64, seed=5)
    assert torch.equal(syn, synthetic_video(4, 32, 64, seed=5))
    small = load_frames("synthetic", num_frames=4, height=32, width=64, seed=5, resize=(16, 32))
    assert small.shape == (4, 3, 16, 32) and small.dtype == torch.uint8
    # antialiased downscale ~ 2x2 box average for a smooth image
    ref = torch.nn.functional.avg_pool2d(syn.float(), 2)
    assert (small.float() - ref).abs().mean() < 4.0
    _write_pngs(tmp_path / "f", syn)
    assert torch.equal(load_frames("folder", str(tmp_path / "f")), syn)
    assert load_frames("folder", tmp_path / "f", resize=(8, 8)).shape == (4, 3, 8, 8)


def test_load_frames_errors(tmp_path):
    with pytest.raises(DataError, match="data.source"):
        load_frames("webcam")
    with pytest.raises(DataError, match="data.path"):
        load_frames("folder")
    with pytest.raises(DataError, match="data.resize"):
        load_frames("synthetic", num_frames=2, height=8, width=8, resize=(0, 4))
    with pytest.raises(DataError, match="does_not_exist"):
        load_frames("folder", str(tmp_path / "does_not_exist"))


def test_resize_rounds_to_the_nearest_level():
    """A resized flat colour keeps its value (float interpolation lands a hair below 7, 100, 255: truncating
    would darken the whole video by up to one level, and by half a level on average)."""
    frames = torch.tensor([7, 100, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 48, 80).contiguous()
    resized = resize_frames(frames, (30, 50))
    assert resized.shape == (2, 3, 30, 50) and torch.equal(resized, frames[:, :, :30, :50])
