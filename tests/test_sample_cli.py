"""python -m hnerv_fast.sample: volumes of the right shape from trained cascade checkpoints (.npy, .nii.gz); their
PSNR / 3D SSIM against a reference volume (--reference, --json) and the slice preview (--preview)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hnerv_fast.config import load_config
from hnerv_fast.data.phantoms import phantom_dataset
from hnerv_fast.inference.volume_preview import preview_png
from hnerv_fast.models.volume_metrics import volume_psnr, volume_ssim
from hnerv_fast.sample import main, training_intensity
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
    np.save(tmp / "gt.npy", item["volumes"][32][0].numpy())  # the case's ground truth [32, 32, 32]
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


@pytest.mark.parametrize("case", ["views", "extension", "earlier_stage", "checkpoint", "nan_xray"])
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
    elif case == "nan_xray":
        bad = np.load(tmp / "xrays.npy")
        bad[0, 3, 4] = np.nan
        np.save(tmp_path / "nan.npy", bad)
        xrays, pattern = [str(tmp_path / "nan.npy")], "NaN or infinite"
    else:
        ckpt, pattern = tmp_path / "missing.pt", "checkpoint not found"
    args = ["--checkpoint", str(ckpt), "--out", str(dest), "--steps", "2"]
    for x in xrays:
        args += ["--xray", x]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and pattern in err and err.count("\n") == 1, err
    assert not dest.exists()


def _sample_args(out, tmp, dest, *extra):
    return ["--checkpoint", str(out / "stage_32_final.pt"), "--xray", str(tmp / "xrays.npy"), "--out", str(dest),
            "--steps", "2", "--seed", "3", *extra]


def _direct_quality(sample: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    pred, target = torch.from_numpy(sample)[None, None], torch.from_numpy(reference)[None, None]
    return float(volume_psnr(pred, target)[0]), float(volume_ssim(pred, target)[0])


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_reference_npy_and_nifti_give_the_metrics_of_volume_metrics(trained, tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    out, tmp = trained
    gt = np.load(tmp / "gt.npy")
    nib.save(nib.Nifti1Image(gt, np.eye(4)), str(tmp_path / "gt.nii.gz"))
    records = []
    for reference in (tmp / "gt.npy", tmp_path / "gt.nii.gz"):
        dest, report = tmp_path / f"vol_{reference.name}.npy", tmp_path / f"q_{reference.name}.json"
        assert main(_sample_args(out, tmp, dest, "--reference", str(reference), "--json", str(report))) == 0
        record = _strict_json(report)
        psnr, ssim = _direct_quality(np.load(dest), gt)
        assert record["psnr"] == pytest.approx(psnr, rel=1e-5) and record["ssim"] == pytest.approx(ssim, rel=1e-5)
        assert {k: record[k] for k in ("stage", "size", "steps", "seed")} == {
            "stage": "stage_32", "size": 32, "steps": 2, "seed": 3}
        assert 0 < record["psnr"] < 60 and -1 < record["ssim"] < 1  # a real comparison, not the sample itself
        assert f"PSNR {record['psnr']:.2f} dB, 3D SSIM {record['ssim']:.4f}" in capsys.readouterr().out
        records.append(record)
    assert records[0] == records[1]


def test_reference_is_normalised_and_resized_like_the_training_data(trained, tmp_path):
    out, tmp = trained
    hounsfield = np.random.default_rng(5).uniform(-1000.0, 2000.0, size=(40, 40, 40)).astype(np.float32)
    np.save(tmp_path / "hu.npy", hounsfield)
    dest, report = tmp_path / "vol.npy", tmp_path / "q.json"
    assert main(_sample_args(out, tmp, dest, "--reference", str(tmp_path / "hu.npy"),
                             "--reference-intensity", "minmax", "--json", str(report))) == 0
    unit = (hounsfield - hounsfield.min()) / (hounsfield.max() - hounsfield.min())
    expected = F.interpolate(torch.from_numpy(unit)[None, None], size=(32, 32, 32), mode="trilinear",
                             align_corners=False)[0, 0].numpy()
    record = _strict_json(report)
    psnr, ssim = _direct_quality(np.load(dest), expected)
    assert record["psnr"] == pytest.approx(psnr, rel=1e-5) and record["ssim"] == pytest.approx(ssim, rel=1e-5)


def test_auto_intensity_follows_the_training_data():
    assert training_intensity("auto", {"config": {"data": {"source": "folder"}}}) == "minmax"
    assert training_intensity("auto", {"config": {"data": {"source": "phantoms"}}}) == "none"
    assert training_intensity("minmax", {"config": {"data": {"source": "phantoms"}}}) == "minmax"


def test_the_sample_as_its_own_reference(trained, tmp_path, capsys):
    out, tmp = trained
    first, second, report = tmp_path / "first.npy", tmp_path / "second.npy", tmp_path / "q.json"
    assert main(_sample_args(out, tmp, first)) == 0
    assert main(_sample_args(out, tmp, second, "--reference", str(first), "--json", str(report))) == 0
    np.testing.assert_array_equal(np.load(first), np.load(second))  # same seed: the reference is this sample
    record = _strict_json(report)
    assert record["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert record["psnr"] == pytest.approx(100.0, abs=1e-3)  # volume_psnr's floor on the MSE: finite, valid JSON
    assert "PSNR 100.00 dB, 3D SSIM 1.0000" in capsys.readouterr().out


def _expected_tiles(volume: np.ndarray) -> list[np.ndarray]:
    """Axial (middle H), coronal (middle D), sagittal (middle W, rows H): grey 0..255, 4x nearest for 32^3."""
    planes = [volume[:, 16, :], volume[16, :, :], volume[:, :, 16].T]
    return [np.kron(np.rint(np.clip(p, 0, 1) * 255).astype(np.uint8), np.ones((4, 4), np.uint8)) for p in planes]


def test_preview_rows_are_the_sample_and_reference_slices(trained, tmp_path):
    out, tmp = trained
    dest, preview = tmp_path / "vol.npy", tmp_path / "figs" / "preview.png"
    assert main(_sample_args(out, tmp, dest, "--reference", str(tmp / "gt.npy"), "--preview", str(preview))) == 0
    with Image.open(preview) as im:
        assert im.mode == "L"
        pixels = np.asarray(im)
    label_w, header_h, tile, gap = 72, 16, 128, 4  # 32^3 -> 128 px slices; labels left and on top
    assert pixels.shape == (header_h + 2 * tile + gap, label_w + 3 * tile + 2 * gap)
    for row, volume in enumerate((np.load(dest), np.load(tmp / "gt.npy"))):
        top = header_h + row * (tile + gap)
        for col, expected in enumerate(_expected_tiles(volume)):
            left = label_w + col * (tile + gap)
            np.testing.assert_array_equal(pixels[top:top + tile, left:left + tile], expected,
                                          err_msg=f"row {row} column {col}")
    assert (pixels[:header_h, label_w:] > 200).any() and (pixels[header_h:, :label_w] > 200).any()  # labels
    assert (pixels[header_h:header_h + tile, label_w + tile:label_w + tile + gap] == 48).all()  # gap


def test_preview_without_reference_has_one_row(trained, tmp_path):
    out, tmp = trained
    preview = tmp_path / "preview.png"
    assert main(_sample_args(out, tmp, tmp_path / "vol.npy", "--preview", str(preview))) == 0
    with Image.open(preview) as im:
        assert im.size == (72 + 3 * 128 + 2 * 4, 16 + 128)
        pixels = np.asarray(im)
    np.testing.assert_array_equal(pixels[16:144, 72:200], _expected_tiles(np.load(tmp_path / "vol.npy"))[0])


def test_preview_volumes_must_share_one_size():
    with pytest.raises(ValueError, match="cubes"):
        preview_png([("sample", np.zeros((16, 16, 16), np.float32)), ("reference", np.zeros((8, 8, 8), np.float32))])


@pytest.mark.parametrize("case", ["not_cube", "two_d", "unreadable", "missing", "extension", "json_alone",
                                  "preview_extension"])
def test_bad_reference_or_report_is_one_line_exit_2(trained, tmp_path, capsys, case):
    out, tmp = trained
    reference = tmp_path / "ref.npy"
    extra = ["--reference", str(reference)]
    if case == "not_cube":
        np.save(reference, np.zeros((32, 32, 16), np.float32))
        pattern = "not a cube"
    elif case == "two_d":
        np.save(reference, np.zeros((32, 32), np.float32))
        pattern = "3D array"
    elif case == "unreadable":
        reference = tmp_path / "ref.nii.gz"
        reference.write_bytes(b"not a volume")
        extra, pattern = ["--reference", str(reference)], "cannot read volume"
    elif case == "missing":
        pattern = "cannot read volume"
    elif case == "extension":
        extra, pattern = ["--reference", str(tmp / "frontal.png")], "unsupported extension"
    elif case == "json_alone":
        extra, pattern = ["--json", str(tmp_path / "q.json")], "give --reference too"
    else:
        np.save(reference, np.load(tmp / "gt.npy"))
        extra += ["--preview", str(tmp_path / "p.jpg")]
        pattern = "use .png"
    dest = tmp_path / "vol.npy"
    assert main(_sample_args(out, tmp, dest, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and pattern in err and err.count("\n") == 1, err
    assert not dest.exists() and not (tmp_path / "q.json").exists()
