"""Render frames of a trained dual-head HNeRV as PNG files or an H.264 video.

    python -m hnerv_fast.decode --checkpoint output/patch_dual/tiny/<run>/best.pt --out frames/
    python -m hnerv_fast.decode --checkpoint model.hnvc --out clip.mp4 --frames 0:39:0.5 --fps 50

``--checkpoint`` is a run's ``best.pt`` / ``latest.pt`` or a file written by ``python -m hnerv_fast.compress``.

Which frames:
  --frames START:STOP[:STEP]  Python-slice-like frame times, STOP exclusive; STEP may be fractional
                              (0:39:0.5 also renders the times halfway between trained frames); negative
                              START / STOP count from the end; without STOP the range runs through the last
                              frame (::0.5 is 0, 0.5, ..., num_frames - 1); a single number is one frame.
                              Default: every trained frame. Write a negative START as --frames=-10:
  --times 3,7.5,12            explicit frame times.
Times outside [0, num_frames - 1] and shifts beyond half a patch (patch centres outside the frame) are
extrapolation, which the model was never trained on: they are an error unless --extrapolate is given.
--shift DY,DX moves every patch centre by that fraction of a patch height / width (fractional patch
positions: the frame is put together from patches the model never saw during training).

Output: a folder of PNGs (frame_00012.png; a fractional time shows in the name: frame_00012.50.png) or,
for ``--out NAME.mp4``, an H.264 (yuv420p) video; yuv420p needs even sizes, so an odd height or width is
padded by repeating the last row / column (a note says so). Frames are rendered in float32, as the trainer evaluates.
Bad input: one ``error:`` line and exit code 2.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from hnerv_fast.device import resolve_device
from hnerv_fast.errors import UserError, report, writing
from hnerv_fast.inference.cli import model_command_parser

VIDEO_SUFFIXES = (".mkv", ".avi", ".mov", ".webm", ".gif")  # recognised, but only .mp4 is written
MAX_FRAMES = 1_000_000  # a range that selects more is a typo, not a request


class DecodeError(UserError, ValueError):
    """Bad input to the decoder (frame range, times, shift, output path)."""


# --------------------------------------------------------------------------------------------------------
# frame times
# --------------------------------------------------------------------------------------------------------
def _number(text: str, option: str, spec: str) -> Fraction:
    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise DecodeError(f"{option} {spec!r}: {text.strip()!r} is not a number") from None


@dataclass(frozen=True)
class FrameRange:
    """A parsed ``--frames`` value; ``times(num_frames)`` resolves it against a video's length."""

    spec: str
    start: Fraction | None
    stop: Fraction | None
    step: Fraction
    single: bool  # "12" (no colon): just that frame

    @classmethod
    def parse(cls, spec: str) -> "FrameRange":
        parts = spec.split(":")
        if len(parts) > 3:
            raise DecodeError(f"--frames {spec!r}: expected START:STOP[:STEP] (at most two ':')")
        values = [_number(p, "--frames", spec) if p.strip() else None for p in parts]
        if len(parts) == 1 and values[0] is None:
            raise DecodeError("--frames is empty: give START:STOP[:STEP] or a frame number")
        step = values[2] if len(values) == 3 and values[2] is not None else Fraction(1)
        if step <= 0:
            raise DecodeError(f"--frames {spec!r}: STEP must be > 0, got {step}")
        return cls(spec, values[0], values[1] if len(values) > 1 else None, step, single=len(parts) == 1)

    def times(self, num_frames: int) -> list[Fraction]:
        def absolute(v: Fraction) -> Fraction:
            return v + num_frames if v < 0 else v  # negative counts from the end, as in Python

        start = absolute(self.start) if self.start is not None else Fraction(0)
        if self.single:
            return [start]
        # without STOP the range runs through the last frame, also for a fractional STEP
        last = absolute(self.stop) if self.stop is not None else Fraction(num_frames - 1)
        count = max(0, int((last - start) / self.step) + 1) if last >= start else 0
        if count > MAX_FRAMES:
            raise DecodeError(f"--frames {self.spec!r} selects {count} frame times (at most {MAX_FRAMES})")
        times = [start + k * self.step for k in range(count)]
        if self.stop is not None:
            times = [t for t in times if t < last]  # STOP is exclusive
        if not times:
            raise DecodeError(f"--frames {self.spec!r} selects no frame time of a {num_frames}-frame video")
        return times


def parse_times(spec: str) -> list[Fraction]:
    """``--times 3,7.5,12`` -> exact frame times."""
    items = [item for item in spec.split(",") if item.strip()]
    if not items:
        raise DecodeError("--times is empty: give comma-separated frame times, e.g. 3,7.5,12")
    return [_number(item, "--times", spec) for item in items]


def parse_shift(spec: str) -> tuple[float, float]:
    """``--shift DY,DX`` -> (dy, dx) in patch units."""
    parts = spec.split(",")
    if len(parts) != 2:
        raise DecodeError(f"--shift {spec!r}: expected DY,DX (two numbers in patch units, e.g. 0.5,0)")
    dy, dx = (float(_number(p, "--shift", spec)) for p in parts)
    return dy, dx


def check_extent(times: list[Fraction], shift: tuple[float, float], num_frames: int, extrapolate: bool) -> None:
    """Refuse what the model was never trained near unless ``extrapolate``: times outside
    [0, num_frames - 1], and shifts that move patch centres outside the frame (|shift| > 0.5)."""
    if extrapolate:
        return
    outside = [t for t in times if t < 0 or t > num_frames - 1]
    if outside:
        raise DecodeError(f"frame time {float(outside[0]):g} is outside the trained frames [0, {num_frames - 1}] "
                          f"({len(outside)} such time(s)); add --extrapolate to render them anyway")
    if max(abs(shift[0]), abs(shift[1])) > 0.5:
        raise DecodeError(f"--shift {shift[0]:g},{shift[1]:g} moves patch centres outside the frame (|shift| > 0.5); "
                          f"add --extrapolate to render it anyway")


def frame_name(t: Fraction) -> str:
    """frame_00012.png for a whole frame time; frame_00012.50.png (at least two decimals, at most six) otherwise."""
    sign = "-" if t < 0 else ""
    t = abs(t)
    if t.denominator == 1:
        return f"frame_{sign}{int(t):05d}.png"
    whole, decimals = f"{float(t):.6f}".rstrip("0").split(".")
    return f"frame_{sign}{int(whole):05d}.{decimals.ljust(2, '0')}.png"


def check_distinct_names(times: list[Fraction]) -> None:
    """Two times with one PNG name would leave one file for two frames (names keep six decimals)."""
    seen: dict[str, Fraction] = {}
    for t in times:
        name = frame_name(t)
        if name in seen:
            raise DecodeError(f"frame times {float(seen[name])!r} and {float(t)!r} would both be written as "
                              f"{name} (PNG names keep six decimals); give distinct times")
        seen[name] = t


# --------------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------------
def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """float [T, 3, H, W] in [0, 1] -> uint8 [T, H, W, 3] (what images and video frames hold)."""
    return (frames * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class PngFolder:
    def __init__(self, folder: Path):
        if folder.exists() and not folder.is_dir():
            raise DecodeError(f"--out {folder} is a file; give a folder for PNG frames or a .mp4 name")
        with writing(folder):  # a file in the way: one line, before any frame is rendered
            folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder

    def write(self, times: list[Fraction], images: np.ndarray) -> None:
        from PIL import Image

        for t, image in zip(times, images):
            Image.fromarray(image).save(self.folder / frame_name(t))

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class Mp4Writer:
    """H.264 / yuv420p through PyAV, written to a temp file beside the target and renamed when complete."""

    def __init__(self, path: Path, height: int, width: int, fps: float, crf: int):
        import av

        self.path = path
        self.pad = (height % 2, width % 2)  # yuv420p halves both sides for chroma
        self.tmp = path.with_name(f".{path.name}.partial")
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(self.tmp), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=Fraction(str(fps)).limit_denominator(1001))
        self.stream.height, self.stream.width = height + self.pad[0], width + self.pad[1]
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(crf)}

    def write(self, times: list[Fraction], images: np.ndarray) -> None:
        import av

        if any(self.pad):  # repeat the last row / column
            images = np.pad(images, ((0, 0), (0, self.pad[0]), (0, self.pad[1]), (0, 0)), mode="edge")
        for image in images:
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():  # flush the encoder's delayed frames
            self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.container.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def output_kind(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix == ".mp4":
        return "mp4"
    if suffix in VIDEO_SUFFIXES:
        raise DecodeError(f"--out {out}: only .mp4 (H.264) videos are written; give a .mp4 name or a folder for PNGs")
    return "png"


# --------------------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------------------
def decode(checkpoint: str | Path, out: str | Path, *, frames: str | None = None, times: str | None = None,
           shift: str | None = None, extrapolate: bool = False, fps: float = 25.0, crf: int = 17,
           batch_size: int = 8, device: str = "auto") -> tuple[list[Fraction], str]:
    """Render the chosen frame times of ``checkpoint`` into ``out``; (the times, a note about the output)."""
    from tqdm import tqdm

    from hnerv_fast.inference.dual import load_trained_dual

    out = Path(out)
    kind = output_kind(out)
    frame_range = FrameRange.parse(frames) if frames is not None else None
    explicit = parse_times(times) if times is not None else None
    offset = parse_shift(shift) if shift is not None else (0.0, 0.0)
    trained = load_trained_dual(checkpoint, resolve_device(device, "--device"))
    if explicit is not None:
        chosen = explicit
    else:
        chosen = (frame_range or FrameRange.parse(":")).times(trained.num_frames)
    check_extent(chosen, offset, trained.num_frames, extrapolate)
    if kind == "png":
        check_distinct_names(chosen)

    height, width = trained.height, trained.width
    sink = Mp4Writer(out, height, width, fps, crf) if kind == "mp4" else PngFolder(out)
    try:
        with tqdm(total=len(chosen), unit="frame", desc="decode", disable=None) as bar:
            for start in range(0, len(chosen), batch_size):
                chunk = chosen[start:start + batch_size]
                rendered = trained.frames(torch.tensor([float(t) for t in chunk], dtype=torch.float64), offset,
                                          batch_size=len(chunk) * trained.grid.count)
                sink.write(chunk, to_uint8(rendered))
                bar.update(len(chunk))
        sink.close()
    except BaseException:
        sink.abort()
        raise
    if kind == "png":
        return chosen, f"{len(chosen)} PNG frame(s) of {height}x{width} in {out}"
    size = f"{height + height % 2}x{width + width % 2}"
    padded = f" (padded from {height}x{width}: yuv420p needs even sizes)" if (height % 2 or width % 2) else ""
    return chosen, f"{len(chosen)} frame(s) of {size}{padded} at {fps:g} fps in {out} (H.264, crf {crf})"


def main(argv: list[str] | None = None) -> int:
    parser = model_command_parser("hnerv_fast.decode", __doc__,
                                  "a dual_hnerv run's best.pt / latest.pt, or a file written by hnerv_fast.compress")
    parser.add_argument("--out", required=True, help="folder for PNG frames, or NAME.mp4 for an H.264 video")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--frames", help="START:STOP[:STEP] frame times (STOP exclusive, STEP may be fractional); "
                                        "default: every trained frame")
    which.add_argument("--times", help="comma-separated frame times, e.g. 3,7.5,12")
    parser.add_argument("--shift", help="DY,DX: move every patch centre by this fraction of a patch (e.g. 0.5,0)")
    parser.add_argument("--extrapolate", action="store_true",
                        help="allow times outside [0, num_frames - 1] and shifts beyond half a patch")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate of a .mp4 output (default 25)")
    parser.add_argument("--crf", type=int, default=17, help="H.264 quality of a .mp4, 0 (lossless) to 51 (default 17)")
    parser.add_argument("--batch-size", type=int, default=8, help="frames rendered per batch (default 8)")
    args = parser.parse_args(argv)
    try:
        if not (math.isfinite(args.fps) and args.fps > 0):
            raise DecodeError(f"--fps must be a number > 0, got {args.fps:g}")
        if not 0 <= args.crf <= 51:
            raise DecodeError(f"--crf must be in [0, 51], got {args.crf}")
        if args.batch_size < 1:
            raise DecodeError(f"--batch-size must be >= 1, got {args.batch_size}")
        _, note = decode(args.checkpoint, args.out, frames=args.frames, times=args.times, shift=args.shift,
                         extrapolate=args.extrapolate, fps=args.fps, crf=args.crf, batch_size=args.batch_size,
                         device=args.device)
    except UserError as exc:
        return report(exc)
    print(f"wrote {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
