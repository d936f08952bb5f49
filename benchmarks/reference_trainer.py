"""Run the published dual-head trainer, unmodified, on our frames and read back its epoch times.

What it measures: the seconds per training epoch that AlanjyHuang/HNeRV's `core/train_patch_dual.py`
prints itself (`Time/epoch: Current:...s`), with arguments matching configs/dual_hnerv_default.yaml
(120 frames of 128x256, 2x4 patches of 64x64, 1,195,328 parameters, batch 32, Fusion6 + 0.1 x CLIP
loss from the first epoch). The printed time covers the training steps only; the evaluations it runs
after epochs E-4, E-2 and E come after the print.

Why `-j 0`: the reference caches each frame's CLIP targets in its dataset object. With loader workers
that cache lives in worker processes that die at the end of every epoch, so every epoch would recompute
CLIP. In the main process it is filled once, during epoch 1, which therefore also holds the CLIP cost:
callers drop epoch 1.

What stands in for what: OpenAI's `clip`, `decord` and `pytorchvideo` are replaced by our own small
modules in benchmarks/reference_shims/. The CLIP stand-in builds open_clip's ViT-B-32 with random
weights (nothing can be downloaded), so it costs what the real encoder costs but its targets mean
nothing. `dahuffman`, `imageio`, `pandas` and `matplotlib` (imported by the reference, unused while
training) are installed for real, pinned, with pip into a cache folder under the system temp dir
(DEPS_DIR), never into the project's virtualenv.

Nothing of the reference is copied into this repository: it runs from a checkout named by the caller
(or by $REFERENCE_HNERV), which `--checkout-from` makes from a git mirror.

    python -m benchmarks.reference_trainer --checkout-from /work/.mirror/AlanjyHuang+HNeRV/repo --to /tmp/hnerv_ref
    python -m benchmarks.reference_trainer --run --checkout /tmp/hnerv_ref --epochs 3
"""
from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from torchvision.io import write_png

from hnerv_fast.config import load_config
from hnerv_fast.data.video import synthetic_video

REFERENCE_ENV = "REFERENCE_HNERV"

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "dual_hnerv_default.yaml"
SHIM_DIR = Path(__file__).resolve().parent / "reference_shims"
DEPS_DIR = Path(tempfile.gettempdir()) / f"hnerv_reference_deps_py{sys.version_info.major}{sys.version_info.minor}"

# Installed with --no-deps so pip cannot put a second numpy/pillow ahead of the venv's on PYTHONPATH;
# the pins make this list the complete set of what these packages need beyond the venv.
DEPS = (
    "dahuffman==0.4.2", "imageio==2.38.1", "pandas==3.1.1", "python-dateutil==4.0.0",
    "matplotlib==3.11.2", "contourpy==1.3.3", "cycler==0.12.1", "fonttools==4.68.0",
    "kiwisolver==1.5.1", "pyparsing==3.3.3",
)

# configs/dual_hnerv_default.yaml in the reference's terms. `--ks 0_1_5`: stage i uses kernel
# min(1 + 2i, 5), i.e. 1, 3, 5, 5; widths 96 -> 80, 67, 56, 47 (reduce 1.2, floor 32). `--eval_freq`
# past any run length leaves only the reference's fixed evaluations at the end.
REFERENCE_ARGS = (
    "--crop_list", "-1", "--resize_list", "-1", "--data_split", "9_9_10",
    "--embed", "pe_1.25_80", "--fc_dim", "96", "--fc_hw", "2_2", "--dec_strds", "4", "2", "2", "2",
    "--ks", "0_1_5", "--reduce", "1.2", "--lower_width", "32",
    "--loss", "Fusion6", "--clip_loss_weight", "0.1", "--pixel_loss_warmup_epochs", "0",
    "-b", "32", "-j", "0", "--lr", "0.001", "--eval_freq", "100000", "--outf", "bench", "--overwrite",
)

EPOCH_TIME = re.compile(r"Time/epoch: Current:([0-9.]+)s")


def write_frames(frames_uint8, out_dir) -> Path:
    """uint8 [T, 3, H, W] -> out_dir/frame_0000.png, ...; the reference trains on every file of the
    folder in sorted order, so the folder must start empty."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ValueError(f"{out} is not empty: the reference would train on every file in it")
    for i, frame in enumerate(frames_uint8):
        write_png(frame.contiguous(), str(out / f"frame_{i:04d}.png"))
    return out


def _run(cmd: list[str], what: str, **kwargs) -> str:
    """stdout + stderr of cmd; RuntimeError with their tail when it fails."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc.stdout


def ensure_deps() -> Path:
    """DEPS installed under DEPS_DIR (once; a finished install is renamed into place)."""
    if DEPS_DIR.is_dir():
        return DEPS_DIR
    staging = Path(tempfile.mkdtemp(prefix=DEPS_DIR.name + ".", dir=DEPS_DIR.parent))
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
          "--target", str(staging), *DEPS], "pip install of the reference's imports")
    try:
        staging.rename(DEPS_DIR)
    except OSError:  # another run installed them meanwhile
        shutil.rmtree(staging)
    return DEPS_DIR


def reference_epoch_seconds(checkout: str | Path, frames_dir: Path, workdir: Path, epochs: int,
                            extra_args: list[str] = ()) -> list[float]:
    """Seconds of each epoch (epoch 1 included) that the unmodified reference prints when trained on
    frames_dir for `epochs` epochs. It writes output/bench/... under workdir. extra_args come last, so
    they override REFERENCE_ARGS (argparse keeps the last value)."""
    script = Path(checkout) / "core" / "train_patch_dual.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: is {checkout} a checkout of AlanjyHuang/HNeRV?")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # core/ itself is sys.path[0] as the script's folder (`from model_patch_dual import ...`)
    path = [str(SHIM_DIR), str(ensure_deps()), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
    cmd = [sys.executable, str(script), "--data_path", str(Path(frames_dir).resolve()), *REFERENCE_ARGS,
           "--epochs", str(epochs), *extra_args]
    out = _run(cmd, "reference trainer", cwd=workdir, env=env)
    seconds = [float(s) for s in EPOCH_TIME.findall(out)]
    if len(seconds) != epochs:
        raise RuntimeError(f"reference trainer printed {len(seconds)} epoch times, expected {epochs}:\n{out[-4000:]}")
    return seconds


def make_checkout(mirror: Path, to: Path) -> str:
    """The mirror's HEAD tree extracted into `to`; returns the commit."""
    commit = _run(["git", "-C", str(mirror), "rev-parse", "HEAD"], "git rev-parse").strip()
    tar = subprocess.run(["git", "-C", str(mirror), "archive", "--format=tar", commit],
                         stdout=subprocess.PIPE, check=True).stdout
    to.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(to, filter="data")
    return commit


def default_frames():
    """The frames our default config trains on."""
    d = load_config(DEFAULT_CONFIG).data
    return synthetic_video(num_frames=d.num_frames, height=d.height, width=d.width, seed=d.seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--checkout-from", type=Path, metavar="MIRROR", help="git dir to extract a checkout from")
    action.add_argument("--run", action="store_true", help="train the reference on our default frames")
    parser.add_argument("--to", type=Path, help="where --checkout-from extracts to")
    parser.add_argument("--checkout", default=os.environ.get(REFERENCE_ENV), help=f"default: ${REFERENCE_ENV}")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)

    if args.checkout_from:
        if args.to is None:
            parser.error("--checkout-from needs --to")
        print(f"{args.to}: AlanjyHuang/HNeRV at {make_checkout(args.checkout_from, args.to)}")
        return
    if not args.checkout:
        parser.error(f"--run needs --checkout or ${REFERENCE_ENV}")
    with tempfile.TemporaryDirectory(prefix="hnerv_reference_") as tmp:
        frames_dir = write_frames(default_frames(), Path(tmp) / "frames")
        seconds = reference_epoch_seconds(args.checkout, frames_dir, Path(tmp) / "work", args.epochs)
    for epoch, s in enumerate(seconds, 1):
        print(f"epoch {epoch}: {s:.2f}s" + ("  (includes CLIP targets for every frame)" if epoch == 1 else ""))


if __name__ == "__main__":
    main()
