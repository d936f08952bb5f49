"""Frame split rule, frames <-> patches, sample-id order, patch coordinates."""
from __future__ import annotations

import pytest
import torch

from hnerv_fast.data.patches import (
    PatchGrid,
    from_patches,
    patch_coords,
    sample_ids,
    split_frames,
    to_patches,
)
from hnerv_fast.data.video import DataError
from tests.imports import modules_loaded_by, within


# ------------------------------------------------------------------ grid
def test_grid_defaults_and_patch_size():
    g = PatchGrid()
    assert (g.rows, g.cols, g.count) == (2, 4, 8)
    assert g.patch_size(64, 128) == (32, 32)
    assert g.patch_size(128, 256) == (64, 64)
    with pytest.raises(DataError, match="divisible"):
        g.patch_size(64, 126)
    with pytest.raises(DataError):
        PatchGrid(0, 4)
    with pytest.raises(Exception):
        g.rows = 3  # frozen


# ------------------------------------------------------------------ split
def _brute_split(n, a, b, c, order):
    train = sorted(int(order[i]) for i in range(n) if i % c < a)
    val = sorted(int(order[i]) for i in range(n) if i % c >= b)
    return train, val


def test_split_9_10_10_has_no_val_frames():
    # The spec/HNeRV rule taken literally: i % 10 < 9 -> train, i % 10 >= 10 never holds, so
    # "9_10_10" trains on 9 of every 10 frames and the 10th is in NEITHER set (val is empty).
    tr, va = split_frames(40, "9_10_10")
    assert tr.dtype == torch.long and va.dtype == torch.long
    assert tr.tolist() == [i for i in range(40) if i % 10 != 9]
    assert va.numel() == 0


def test_split_9_9_10_holds_out_every_tenth_frame():
    tr, va = split_frames(40, "9_9_10")
    assert va.tolist() == [9, 19, 29, 39]
    assert tr.tolist() == [i for i in range(40) if i % 10 != 9]
    assert set(tr.tolist()).isdisjoint(va.tolist())


def test_split_gap_frames_in_neither():
    tr, va = split_frames(12, "2_4_5")
    assert tr.tolist() == [0, 1, 5, 6, 10, 11]
    assert va.tolist() == [4, 9]  # positions 2, 3 (mod 5) are in neither


def test_split_1_1_1_all_train_no_val():
    # i % 1 == 0 < 1 -> every frame trains; 0 >= 1 is false -> validation set is empty
    tr, va = split_frames(7, "1_1_1")
    assert tr.tolist() == list(range(7))
    assert va.numel() == 0 and va.dtype == torch.long


def test_split_few_frames_can_have_empty_val():
    tr, va = split_frames(9, "9_9_10")
    assert tr.tolist() == list(range(9)) and va.numel() == 0


def test_split_shuffle_seeded():
    tr, va = split_frames(40, "9_9_10", shuffle=True, seed=7)
    tr2, va2 = split_frames(40, "9_9_10", shuffle=True, seed=7)
    tr3, va3 = split_frames(40, "9_9_10", shuffle=True, seed=8)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert not torch.equal(va, va3)
    assert va.tolist() != [9, 19, 29, 39]
    assert len(va) == 4 and len(tr) == 36
    assert sorted(tr.tolist() + va.tolist()) == list(range(40))
    assert tr.tolist() == sorted(tr.tolist()) and va.tolist() == sorted(va.tolist())
    order = torch.randperm(40, generator=torch.Generator().manual_seed(7))
    assert (tr.tolist(), va.tolist()) == _brute_split(40, 9, 9, 10, order)
    # shuffle with a gap: brute force agrees too
    tr, va = split_frames(23, "2_3_4", shuffle=True, seed=1)
    order = torch.randperm(23, generator=torch.Generator().manual_seed(1))
    assert (tr.tolist(), va.tolist()) == _brute_split(23, 2, 3, 4, order)


@pytest.mark.parametrize("bad", ["9_10", "9_10_10_1", "a_b_c", "9-10-10", "", "11_10_10",
                                 "9_11_10", "0_0_0", "1_1_0", "-1_1_2", "0_5_10", "1.5_2_3"])
def test_split_bad_strings(bad):
    with pytest.raises(ValueError, match="data.data_split"):
        split_frames(10, bad)


def test_split_bad_num_frames():
    with pytest.raises(ValueError):
        split_frames(0)


# ------------------------------------------------------------------ patches
def test_patches_inverse_and_id_order():
    T, H, W = 3, 8, 16
    g = PatchGrid()
    frames = torch.randint(0, 256, (T, 3, H, W), dtype=torch.uint8)
    p = to_patches(frames, g)
    assert p.shape == (T * 8, 3, 4, 4) and p.dtype == torch.uint8
    assert torch.equal(from_patches(p, g), frames)
    for f in range(T):
        for r in range(2):
            for c in range(4):
                s = f * 8 + r * 4 + c
                assert torch.equal(p[s], frames[f, :, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4]), (f, r, c)


def test_patches_other_grid_and_float():
    g = PatchGrid(3, 2)
    frames = torch.rand(2, 3, 9, 10)
    p = to_patches(frames, g)
    assert p.shape == (12, 3, 3, 5) and p.dtype == torch.float32
    assert torch.equal(p[1 * 6 + 2 * 2 + 1], frames[1, :, 6:9, 5:10])
    assert torch.equal(from_patches(p, g), frames)
    # a view-based reshape of a batch of patches stays differentiable
    x = frames.clone().requires_grad_(True)
    from_patches(to_patches(x, g), g).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_patches_errors():
    with pytest.raises(DataError):
        to_patches(torch.zeros(3, 8, 16), PatchGrid())
    with pytest.raises(DataError, match="divisible"):
        to_patches(torch.zeros(1, 3, 7, 16), PatchGrid())
    with pytest.raises(DataError, match="multiple"):
        from_patches(torch.zeros(7, 3, 4, 4), PatchGrid())


# ------------------------------------------------------------------ coords / ids
def test_patch_coords_values():
    g = PatchGrid()
    c = patch_coords(5, 64, 128, g)
    assert c.shape == (40, 3) and c.dtype == torch.float32
    # frame 2, row 1, col 3 -> id 2*8 + 1*4 + 3
    assert c[2 * 8 + 7].tolist() == pytest.approx([0.5, 112 / 128, 48 / 64])
    assert c[0].tolist() == pytest.approx([0.0, 16 / 128, 16 / 64])
    assert c[-1].tolist() == pytest.approx([1.0, 0.875, 0.75])
    assert c[:, 0].min() == 0 and c[:, 0].max() == 1
    assert set(c[:, 1].tolist()) == {0.125, 0.375, 0.625, 0.875}
    assert set(c[:, 2].tolist()) == {0.25, 0.75}
    # consistent with to_patches: the coord of a patch is the mean pixel position of its block
    ys, xs = torch.meshgrid(torch.arange(64.0) + 0.5, torch.arange(128.0) + 0.5, indexing="ij")
    pos = torch.stack([xs / 128, ys / 64]).expand(5, 2, 64, 128)
    pp = to_patches(pos, g).mean(dim=(2, 3))
    assert torch.allclose(pp, c[:, 1:], atol=1e-6)


def test_patch_coords_shift_is_dy_then_dx():
    """shift = (dy, dx) in patch heights / widths: dy moves only the y coordinate, dx only x."""
    grid = PatchGrid(2, 4)
    base = patch_coords(3, 64, 128, grid)
    down = patch_coords(3, 64, 128, grid, shift=(0.5, 0.0))
    right = patch_coords(3, 64, 128, grid, shift=(0.0, 0.25))
    assert torch.equal(down[:, :2], base[:, :2]) and torch.allclose(down[:, 2], base[:, 2] + 0.5 * 32 / 64)
    assert torch.equal(right[:, [0, 2]], base[:, [0, 2]]) and torch.allclose(right[:, 1], base[:, 1] + 0.25 * 32 / 128)


def test_patch_coords_single_frame():
    c = patch_coords(1, 8, 8, PatchGrid(2, 2))
    assert c.shape == (4, 3) and bool((c[:, 0] == 0).all())
    expected = torch.tensor([[0, .25, .25], [0, .75, .25], [0, .25, .75], [0, .75, .75]])
    assert torch.allclose(c, expected)


def test_sample_ids():
    g = PatchGrid()
    ids = sample_ids(torch.tensor([0, 3, 9]), g)
    assert ids.dtype == torch.long
    assert ids.tolist() == list(range(0, 8)) + list(range(24, 32)) + list(range(72, 80))
    tr, va = split_frames(20, "9_9_10")
    all_ids = torch.cat([sample_ids(tr, g), sample_ids(va, g)])
    assert sorted(all_ids.tolist()) == list(range(160))
    # ids index to_patches / patch_coords consistently: frame of sample s is s // count
    coords = patch_coords(20, 16, 32, g)
    assert torch.allclose(coords[sample_ids(va, g), 0], va.repeat_interleave(8).float() / 19)
    with pytest.raises(DataError):
        sample_ids(torch.tensor([0.5]), g)


def test_data_modules_do_not_import_train_logging_models():
    loaded = modules_loaded_by("hnerv_fast.data.video", "hnerv_fast.data.patches", "hnerv_fast.data.clip_targets")
    bad = within(loaded, "hnerv_fast.train", "hnerv_fast.logging", "hnerv_fast.models")
    assert not bad, bad
    assert "open_clip" not in loaded, "open_clip must be imported lazily"
