"""python -m hnerv_fast.sample: volumes of the right shape from trained cascade checkpoints (.npy, .nii.gz)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hnerv_fast.config import load_config
from hnerv_fast.data.phantoms import phantom_dataset
from hnerv_fast.sample import main
from hnerv_fast.train.trainer import run

ROOT = Path(__file__).resolve().parents[1]
TINY = "configs/cascade_tiny.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both tiny stages, one epoch each, and the X-rays of an unseen phantom."""
    tmp = tmp_path_factory.mktemp("sample")
    out = tmp / "ckpt"
    cfg = load_config(TINY, [f"output.checkpoint_dir={out}", "train.progress=false", "data.num_cases=6",
                             "train.epochs=1", "train.val_samples=0", "diffusion.ddim_steps=2"])
    run(cfg)
    item = phantom_dataset(1, sizes=(32,), xray_size=32, seed=123)[0]
    xr = item["xrays"].numpy()
    np.save(tmp / "xrays.npy", xr)  # [V, X, X]
    np.save(tmp / "frontal.npy", xr[0])
    np.save(tmp / "lateral.npy", xr[1])
    return out, tmp


def test_npy_output_from_the_last_stage(trained, capsys):
    out, tmp = trained
    dest = tmp / "vol.npy"
    assert main(["--checkpoint", str(out / "stage_32_final.pt"), "--xray", str(tmp / "xrays.npy"),
                 "--out", str(dest), "--steps", "3"]) == 0
    vol = np.load(dest)
    assert vol.shape == (32, 32, 32) and vol.dtype == np.float32
    assert np.isfinite(vol).all() and vol.min() >= 0 and vol.max() <= 1
    assert "[32, 32, 32]" in capsys.readouterr().out


def test_nifti_output_one_file_per_view_via_cli(trained):
    nib = pytest.importorskip("nibabel")
    out, tmp = trained
    dest = tmp / "sub" / "vol.nii.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "hnerv_fast.sample", "--checkpoint", str(out / "stage_32_final.pt"),
         "--xray", str(tmp / "frontal.npy"), "--xray", str(tmp / "lateral.npy"), "--out", str(dest), "--steps", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    vol = np.asarray(nib.load(str(dest)).get_fdata())
    assert vol.shape == (32, 32, 32) and np.isfinite(vol).all()


def test_first_stage_checkpoint_gives_its_size(trained):
    out, tmp = trained
    dest = tmp / "coarse.npy"
    assert main(["--checkpoint", str(out / "stage_16_best.pt"), "--xray", str(tmp / "xrays.npy"),
                 "--out", str(dest), "--steps", "2"]) == 0
    assert np.load(dest).shape == (16, 16, 16)


def test_same_seed_same_volume(trained):
    out, tmp = trained
    a, b = tmp / "a.npy", tmp / "b.npy"
    for dest in (a, b):
        assert main(["--checkpoint", str(out / "stage_16_final.pt"), "--xray", str(tmp / "xrays.npy"),
                     "--out", str(dest), "--steps", "2", "--seed", "7"]) == 0
    np.testing.assert_array_equal(np.load(a), np.load(b))


@pytest.mark.parametrize("case", ["views", "extension", "earlier_stage", "checkpoint"])
def test_bad_input_is_one_line_exit_2(trained, tmp_path, capsys, case):
    out, tmp = trained
    ckpt, xrays, dest, pattern = out / "stage_32_final.pt", [str(tmp / "xrays.npy")], tmp_path / "v.npy", ""
    if case == "views":
        xrays, pattern = [str(tmp / "frontal.npy")], "2 view(s)"
    elif case == "extension":
        dest, pattern = tmp_path / "v.mat", "unsupported extension"
    elif case == "earlier_stage":
        alone = tmp_path / "alone"
        alone.mkdir()
        shutil.copy(ckpt, alone / ckpt.name)
        ckpt, pattern = alone / ckpt.name, "stage_16_final.pt"
    else:
        ckpt, pattern = tmp_path / "missing.pt", "checkpoint not found"
    args = ["--checkpoint", str(ckpt), "--out", str(dest), "--steps", "2"]
    for x in xrays:
        args += ["--xray", x]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and pattern in err and err.count("\n") == 1, err
    assert not dest.exists()
