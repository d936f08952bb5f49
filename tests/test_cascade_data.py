"""Synthetic phantoms and the CT folder loader."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from hnerv_fast.data.ct_folder import (CTFolderDataset, CTFolderError, discover_cases,
                                       load_volume, split_cases)
from hnerv_fast.data.phantoms import (analytic_projection, phantom_dataset, phantom_ellipsoids,
                                      phantom_volume, phantom_xrays)
from hnerv_fast.models.drr import drr, drr_views, physics_loss

VIEWS = ("frontal", "lateral")


# -- phantoms -----------------------------------------------------------------------------------
def test_phantom_deterministic_by_seed_and_in_range():
    a, b, c = phantom_volume(24, 7), phantom_volume(24, 7), phantom_volume(24, 8)
    assert a.shape == (1, 24, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    for seed in range(6):
        v = phantom_volume(32, seed)
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0 + 1e-6
        assert float(v.max()) >= 0.8                      # skull present
        assert (v > 0).float().mean() > 0.15              # the head fills a good part of the FOV
        assert float(v[0, 0, 0, 0]) == 0.0                # corners are air
    assert len(phantom_ellipsoids(3)) >= 6
    assert torch.equal(phantom_xrays(5, VIEWS, 16), phantom_xrays(5, VIEWS, 16))


def test_same_object_at_every_size():
    # voxel centres of a 16^3 grid are every third centre of a 48^3 grid: identical samples
    v16, v48 = phantom_volume(16, 2), phantom_volume(48, 2)
    torch.testing.assert_close(v16, v48[:, 1::3, 1::3, 1::3], rtol=0, atol=0)
    v32 = phantom_volume(32, 2)
    pooled = F.avg_pool3d(v32[None], 2)[0]
    assert (pooled - v16).abs().mean() < 0.05


def test_phantom_dataset_items_and_collate():
    ds = phantom_dataset(3, sizes=(16, 32), xray_size=32, views=VIEWS, seed=0)
    assert len(ds) == 3
    item = ds[1]
    assert item["xrays"].shape == (2, 32, 32)
    assert item["volumes"][16].shape == (1, 16, 16, 16)
    assert item["volumes"][32].shape == (1, 32, 32, 32)
    # deterministic and independent of num_cases; different seed -> different cases
    ds2 = phantom_dataset(5, seed=0, cache=False)
    assert torch.equal(ds2[1]["volumes"][16], item["volumes"][16])
    assert torch.equal(ds2[1]["xrays"], item["xrays"])
    assert not torch.equal(phantom_dataset(3, seed=1)[1]["volumes"][16], item["volumes"][16])
    assert ds[0]["name"] != ds[1]["name"]
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["xrays"].shape == (2, 2, 32, 32)
    assert batch["volumes"][16].shape == (2, 1, 16, 16, 16)
    assert len(batch["name"]) == 2
    with pytest.raises(IndexError):
        ds[3]


def test_phantom_xrays_are_consistent_with_model_drr():
    ds = phantom_dataset(2, sizes=(16, 32), xray_size=32, views=VIEWS, seed=4)
    item = ds[0]
    # analytic X-rays of the continuous object vs DRRs of its voxelisations: the residual is the
    # resolution floor (a 16^3 volume cannot hold all the detail of a 32-pixel X-ray)
    var = float(item["xrays"].var())
    floors = {S: float(physics_loss(item["volumes"][S][None], item["xrays"][None], VIEWS))
              for S in (16, 32)}
    assert floors[16] < 0.15 * var and floors[32] < 0.03 * var and floors[32] < floors[16]
    wrong = phantom_dataset(1, sizes=(16, 32), seed=5)[0]["volumes"]
    assert float(physics_loss(wrong[32][None], item["xrays"][None], VIEWS)) > 5 * floors[32]
    # comparing at the coarse volume's native size removes most of the 16^3 floor
    native = float(physics_loss(item["volumes"][16][None], item["xrays"][None], VIEWS, at="volume"))
    assert native < 0.4 * floors[16]
    assert float(physics_loss(wrong[16][None], item["xrays"][None], VIEWS, at="volume")) > 4 * native
    # with the model's projector the X-rays are exactly the DRRs of the largest volume
    dsp = phantom_dataset(2, sizes=(16, 32), xray_size=32, views=VIEWS, seed=4, project=drr)
    itp = dsp[0]
    torch.testing.assert_close(itp["xrays"][None],
                               drr_views(itp["volumes"][32][None], VIEWS, out_size=32))
    assert float(physics_loss(itp["volumes"][32][None], itp["xrays"][None], VIEWS)) < 1e-12


def test_supersampled_voxels_are_partial_volume_averages():
    from hnerv_fast.data.phantoms import Ellipsoid, voxelize
    ball = [Ellipsoid(1.0, (0.0, 0.0, 0.0), (0.6, 0.6, 0.6))]
    fine = voxelize(ball, 16, supersample=4)
    assert fine.min() >= 0 and fine.max() <= 1
    assert ((fine > 0) & (fine < 1)).any()                  # boundary voxels are fractional
    # the mean approaches the true volume fraction (4/3 pi 0.6^3 / 8) better than point samples
    true = 4 / 3 * np.pi * 0.6 ** 3 / 8
    assert abs(fine.mean() - true) < abs(voxelize(ball, 16).mean() - true) + 1e-9
    assert abs(fine.mean() - true) < 0.005
    v = phantom_volume(16, 1, supersample=2)
    assert float(v.min()) >= 0 and float(v.max()) <= 1 + 1e-6


def test_phantom_dataset_argument_errors():
    with pytest.raises(ValueError):
        phantom_dataset(0)
    with pytest.raises(ValueError):
        phantom_dataset(2, views=("axial",))
    with pytest.raises(ValueError):
        analytic_projection(phantom_ellipsoids(0), "top", 8)


# -- CT folder ----------------------------------------------------------------------------------
def _write_png(path, arr, bits=8):
    from PIL import Image
    if bits == 8:
        Image.fromarray(np.round(arr * 255).astype(np.uint8), mode="L").save(path)
    else:
        Image.fromarray(np.round(arr * 65535).astype(np.uint16)).save(path)


def _make_folder(tmp_path):
    import nibabel as nib
    rng = np.random.default_rng(0)
    vol_a = (rng.random((20, 24, 24)) * 1000 - 500).astype(np.float32)   # HU-like, non-cubic
    vol_b = rng.random((16, 16, 16)).astype(np.float32) * 3.0
    np.save(tmp_path / "case_a.npy", vol_a)
    nib.Nifti1Image(vol_b, np.eye(4)).to_filename(str(tmp_path / "case_b.nii.gz"))
    # case_a has X-rays: frontal as 16-bit PNG (H x W = 24 x 24), lateral as npy (H x D = 24 x 20)
    fr = rng.random((24, 24))
    la = rng.random((24, 20)).astype(np.float32)
    _write_png(tmp_path / "case_a_frontal.png", fr, bits=16)
    np.save(tmp_path / "case_a_lateral.npy", la)
    (tmp_path / "notes.txt").write_text("ignored")
    return vol_a, vol_b, fr, la


def test_folder_roundtrip_npy_and_nifti(tmp_path):
    vol_a, vol_b, fr, la = _make_folder(tmp_path)
    cases = discover_cases(tmp_path)
    assert [c.name for c in cases] == ["case_a", "case_b"]
    assert set(cases[0].xrays) == {"frontal", "lateral"} and cases[1].xrays == {}
    np.testing.assert_array_equal(load_volume(tmp_path / "case_b.nii.gz"), vol_b)

    ds = CTFolderDataset(tmp_path, sizes=(8, 16), xray_size=16, views=VIEWS, split="all",
                         project=drr)
    assert ds.names == ["case_a", "case_b"]
    a, b = ds[0], ds[1]
    for item in (a, b):
        assert item["xrays"].shape == (2, 16, 16)
        assert item["volumes"][8].shape == (1, 8, 8, 8)
        assert item["volumes"][16].shape == (1, 16, 16, 16)
        assert float(item["volumes"][16].min()) >= 0 and float(item["volumes"][16].max()) <= 1
    # case_b is already 16^3: min-max normalised but otherwise unchanged
    nb = (vol_b - vol_b.min()) / (vol_b.max() - vol_b.min())
    np.testing.assert_allclose(b["volumes"][16][0].numpy(), nb, atol=1e-6)
    # case_b X-rays are DRRs of its largest volume computed on the fly
    torch.testing.assert_close(b["xrays"][None], drr_views(b["volumes"][16][None], VIEWS, 16))
    # case_a: trilinear resize of the normalised volume, X-rays read (16-bit PNG, npy) + resized
    na = torch.from_numpy((vol_a - vol_a.min()) / (vol_a.max() - vol_a.min()))[None, None]
    ref = F.interpolate(na, size=(8, 8, 8), mode="trilinear", align_corners=False)[0]
    torch.testing.assert_close(a["volumes"][8], ref)
    ref_fr = F.interpolate(torch.from_numpy(fr).float()[None, None], size=(16, 16),
                           mode="bilinear", align_corners=False, antialias=True)[0, 0]
    torch.testing.assert_close(a["xrays"][0], ref_fr, atol=2e-5, rtol=0)
    ref_la = F.interpolate(torch.from_numpy(la)[None, None], size=(16, 16), mode="bilinear",
                           align_corners=False, antialias=True)[0, 0]
    torch.testing.assert_close(a["xrays"][1], ref_la)
    # a fixed intensity window
    dsw = CTFolderDataset(tmp_path, sizes=(16,), xray_size=16, views=("frontal",), split="all",
                          project=drr, intensity=(-1000, 2000))
    nbw = (np.clip(vol_b, -1000, 2000) + 1000) / 3000
    np.testing.assert_allclose(dsw[1]["volumes"][16][0].numpy(), nbw, atol=1e-6)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["volumes"][16].shape == (2, 1, 16, 16, 16)


def test_split_by_case_is_seeded_and_disjoint(tmp_path):
    names = [f"c{i:02d}" for i in range(10)]
    tr, va = split_cases(names, 0.2, seed=0)
    assert len(va) == 2 and len(tr) == 8 and not set(tr) & set(va)
    assert sorted(tr + va) == names
    assert split_cases(names, 0.2, seed=0) == (tr, va)
    assert any(split_cases(names, 0.2, seed=s)[1] != va for s in range(1, 5))
    assert split_cases(["x", "y"], 0.1, 0)[1] != []           # at least one val case
    assert [len(part) for part in split_cases(["x", "y"], 0.9, 0)] == [1, 1]  # and at least one train case
    assert split_cases(["x"], 0.5, 0) == (["x"], [])
    for i in range(5):
        np.save(tmp_path / f"c{i}.npy", np.random.rand(4, 4, 4).astype(np.float32))
    dtr = CTFolderDataset(tmp_path, sizes=(4,), xray_size=4, split="train", val_fraction=0.4,
                          seed=1, project=drr)
    dva = CTFolderDataset(tmp_path, sizes=(4,), xray_size=4, split="val", val_fraction=0.4,
                          seed=1, project=drr)
    assert len(dtr) == 3 and len(dva) == 2 and not set(dtr.names) & set(dva.names)


def test_folder_errors(tmp_path):
    with pytest.raises(CTFolderError, match="does not exist"):
        CTFolderDataset(tmp_path / "missing", project=drr)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CTFolderError, match="no volumes"):
        CTFolderDataset(empty, project=drr)

    # unreadable file: the error names it
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.npy").write_bytes(b"not a numpy file")
    ds = CTFolderDataset(bad, sizes=(8,), xray_size=8, split="all", project=drr)
    with pytest.raises(CTFolderError, match="broken.npy"):
        ds[0]
    (bad / "broken.npy").unlink()
    (bad / "broken.nii.gz").write_bytes(b"\x00" * 10)
    with pytest.raises(CTFolderError, match="broken.nii.gz"):
        CTFolderDataset(bad, sizes=(8,), xray_size=8, split="all", project=drr)[0]

    # 2D "volume"
    flat = tmp_path / "flat"
    flat.mkdir()
    np.save(flat / "img.npy", np.zeros((8, 8), np.float32))
    with pytest.raises(CTFolderError, match="3D"):
        CTFolderDataset(flat, sizes=(8,), xray_size=8, split="all", project=drr)[0]

    # volume / X-ray shape mismatch (lateral must be H x D = 24 x 12)
    mm = tmp_path / "mismatch"
    mm.mkdir()
    np.save(mm / "v.npy", np.random.rand(12, 24, 24).astype(np.float32))
    np.save(mm / "v_frontal.npy", np.random.rand(24, 24).astype(np.float32))
    np.save(mm / "v_lateral.npy", np.random.rand(24, 24).astype(np.float32))
    ds = CTFolderDataset(mm, sizes=(8,), xray_size=8, split="all")
    with pytest.raises(CTFolderError, match="v_lateral.npy"):
        ds[0]

    # unreadable X-ray
    np.save(mm / "v_lateral.npy", np.random.rand(24, 12).astype(np.float32))
    CTFolderDataset(mm, sizes=(8,), xray_size=8, split="all")[0]      # now consistent
    (mm / "v_lateral.npy").unlink()
    (mm / "v_lateral.png").write_bytes(b"garbage")
    with pytest.raises(CTFolderError, match="v_lateral.png"):
        CTFolderDataset(mm, sizes=(8,), xray_size=8, split="all")[0]

    # partial X-rays, missing projector, orphan X-ray, ambiguous X-ray
    (mm / "v_lateral.png").unlink()
    with pytest.raises(CTFolderError, match="lateral"):
        CTFolderDataset(mm, sizes=(8,), xray_size=8, split="all", project=drr)
    assert len(CTFolderDataset(mm, sizes=(8,), xray_size=8, views=("frontal",), split="all")) == 1
    (mm / "v_frontal.npy").unlink()
    with pytest.raises(CTFolderError, match="projector"):
        CTFolderDataset(mm, sizes=(8,), xray_size=8, split="all")
    np.save(mm / "w_frontal.npy", np.zeros((4, 4), np.float32))
    with pytest.raises(CTFolderError, match="w_frontal.npy"):
        CTFolderDataset(mm, sizes=(8,), xray_size=8, split="all", project=drr)
    (mm / "w_frontal.npy").unlink()
    np.save(mm / "v_frontal.npy", np.zeros((24, 24), np.float32))
    _write_png(mm / "v_frontal.png", np.zeros((24, 24)))
    with pytest.raises(CTFolderError, match="two frontal"):
        CTFolderDataset(mm, sizes=(8,), xray_size=8, split="all", project=drr)

    # empty split
    one = tmp_path / "one"
    one.mkdir()
    np.save(one / "only.npy", np.random.rand(4, 4, 4).astype(np.float32))
    with pytest.raises(CTFolderError, match="empty"):
        CTFolderDataset(one, sizes=(4,), xray_size=4, split="val", project=drr)


def test_phantom_split_holds_out_the_last_rounded_fraction_of_cases():
    """README: the last round(val_fraction * num_cases) phantoms (at least one) are validation, the rest train."""
    from hnerv_fast.config import load_config
    from hnerv_fast.data.cascade_data import load_cascade_data

    cfg = load_config("configs/cascade_tiny.yaml", ["data.num_cases=6", "data.val_fraction=0.3"])  # 1.8 -> 2
    data = load_cascade_data(cfg, torch.device("cpu"), project=drr)
    assert data.train_rows.tolist() == [0, 1, 2, 3] and data.val_rows.tolist() == [4, 5]
