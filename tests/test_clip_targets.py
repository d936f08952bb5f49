"""CLIP patch targets: shape, normalisation, determinism, disk cache, checkpoint errors.

Uses the small randomly initialised ``SMALL_CLIP_MODEL`` (ViT-S-32): no weights are downloaded.
"""
from __future__ import annotations

import os

import pytest
import torch

import hnerv_fast.data.clip_targets as ct
from hnerv_fast.data.clip_targets import (
    SMALL_CLIP_MODEL,
    ClipCheckpointError,
    clip_cache_path,
    clip_patch_targets,
    load_clip_image_encoder,
)
from hnerv_fast.data.patches import PatchGrid, to_patches
from hnerv_fast.data.video import synthetic_video

MODEL = SMALL_CLIP_MODEL


@pytest.fixture(scope="module")
def patches():
    return to_patches(synthetic_video(2, 32, 64, seed=0), PatchGrid())[:10]  # 10 x 3 x 16 x 16


@pytest.fixture(scope="module")
def targets(patches, tmp_path_factory):
    d = tmp_path_factory.mktemp("clip_a")
    return clip_patch_targets(patches, model_name=MODEL, pretrained=None, cache_dir=d, batch_size=4), d


def test_shape_dtype_unit_norm(patches, targets):
    emb, _ = targets
    model, mean, std, size = load_clip_image_encoder(MODEL, None, "cpu")
    assert emb.shape == (len(patches), model.visual.output_dim) == (10, 384)
    assert emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert torch.allclose(emb.norm(dim=1), torch.ones(10), atol=1e-5)
    assert size == (224, 224) and len(mean) == 3 and len(std) == 3
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    # different patches get different embeddings
    assert (emb[0] - emb[5]).abs().max() > 1e-4


def test_matches_manual_preprocessing(patches, targets):
    emb, _ = targets
    model, mean, std, size = load_clip_image_encoder(MODEL, "none", "cpu")
    x = torch.nn.functional.interpolate(patches[:3].float() / 255, size=size, mode="bicubic",
                                        antialias=True, align_corners=False).clamp(0, 1)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
    assert torch.allclose(emb[:3], ref, atol=1e-4)


def test_deterministic_and_rng_untouched(patches, targets, tmp_path):
    emb, _ = targets
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = clip_patch_targets(patches, model_name=MODEL, pretrained=None, cache_dir=tmp_path)
    assert torch.equal(torch.rand(3), expected_next), "the caller's RNG stream must be untouched"
    assert torch.allclose(again, emb, atol=1e-5)  # fresh model build, same seed -> same targets


def test_random_init_leaves_the_cuda_generators_alone(monkeypatch):
    """On a GPU machine the caller's CUDA random streams must survive a random-init CLIP build too."""
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    monkeypatch.setattr(torch.cuda, "manual_seed", reseeded.append)
    load_clip_image_encoder(MODEL, None, "cpu")
    assert not reseeded


def test_bf16_targets_are_close_to_fp32_and_cached_apart(patches, targets, tmp_path):
    emb, _ = targets
    bf16 = clip_patch_targets(patches, model_name=MODEL, pretrained=None, cache_dir=tmp_path, amp="bf16")
    assert bf16.dtype == torch.float32 and torch.allclose(bf16.norm(dim=1), torch.ones(len(bf16)), atol=1e-5)
    assert not torch.equal(bf16, emb)  # the encoder did run in bf16
    assert float((bf16 * emb).sum(dim=1).min()) > 0.999
    assert clip_cache_path(patches, model_name=MODEL, pretrained=None, cache_dir=tmp_path, amp="bf16").is_file()


def test_cache_hit_does_not_build_model(patches, targets, monkeypatch):
    emb, cache_dir = targets
    path = clip_cache_path(patches, model_name=MODEL, pretrained=None, cache_dir=cache_dir)
    assert path.is_file() and path.name.startswith("clip_") and path.suffix == ".pt"
    assert [p.name for p in cache_dir.iterdir()] == [path.name], "no temp files left behind"

    def boom(*a, **k):
        raise AssertionError("model must not be built on a cache hit")

    monkeypatch.setattr(ct, "load_clip_image_encoder", boom)
    hit = clip_patch_targets(patches, model_name=MODEL, pretrained=None, cache_dir=cache_dir)
    assert torch.equal(hit, emb)
    # anything in the key changing -> miss -> tries to build the model
    for kwargs in (dict(cache_key_extra="grid=2x4"), dict(pretrained="openai"),
                   dict(model_name="ViT-B-32"), dict(amp="bf16")):
        args = dict(model_name=MODEL, pretrained=None, cache_dir=cache_dir) | kwargs
        with pytest.raises(AssertionError, match="cache hit"):
            clip_patch_targets(patches, **args)
    changed = patches.clone()
    changed[0, 0, 0, 0] ^= 1
    with pytest.raises(AssertionError, match="cache hit"):
        clip_patch_targets(changed, model_name=MODEL, pretrained=None, cache_dir=cache_dir)
    with pytest.raises(AssertionError, match="cache hit"):
        clip_patch_targets(patches[:5], model_name=MODEL, pretrained=None, cache_dir=cache_dir)


def test_corrupt_cache_is_recomputed(patches, targets, tmp_path):
    emb, _ = targets
    path = clip_cache_path(patches[:2], model_name=MODEL, pretrained=None, cache_dir=tmp_path)
    path.write_bytes(b"garbage")
    got = clip_patch_targets(patches[:2], model_name=MODEL, pretrained=None, cache_dir=tmp_path)
    assert torch.allclose(got, emb[:2], atol=1e-5)
    assert torch.load(path, weights_only=True)["embeddings"].shape == (2, 384)


def test_cache_of_other_patches_count_is_recomputed(patches, targets, tmp_path):
    """A cache file whose row count is not the patches' (e.g. written by an older, different run) is not used."""
    emb, _ = targets
    path = clip_cache_path(patches[:2], model_name=MODEL, pretrained=None, cache_dir=tmp_path)
    torch.save({"embeddings": emb[:3]}, path)
    got = clip_patch_targets(patches[:2], model_name=MODEL, pretrained=None, cache_dir=tmp_path)
    assert got.shape == (2, emb.shape[1]) and torch.allclose(got, emb[:2], atol=1e-5)


def test_a_rewritten_local_checkpoint_gets_a_new_cache_key(patches, tmp_path):
    """Local CLIP weights are keyed by path, size and modification time: retrained weights of the same size
    saved over the old file must not reuse the old targets."""
    weights = tmp_path / "clip.pt"
    weights.write_bytes(b"x" * 64)
    os.utime(weights, ns=(1_000_000_000, 1_000_000_000))
    before = clip_cache_path(patches[:2], model_name=MODEL, pretrained=str(weights), cache_dir=tmp_path)
    weights.write_bytes(b"y" * 64)
    os.utime(weights, ns=(2_000_000_000, 2_000_000_000))
    assert clip_cache_path(patches[:2], model_name=MODEL, pretrained=str(weights), cache_dir=tmp_path) != before


def test_rejects_non_uint8(patches, tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        clip_patch_targets(patches.float() / 255, model_name=MODEL, pretrained=None, cache_dir=tmp_path)


# ------------------------------------------------------------------ checkpoint errors
def test_missing_checkpoint_path(tmp_path):
    missing = tmp_path / "no_such_weights.pt"
    with pytest.raises(ClipCheckpointError, match="no_such_weights.pt"):
        load_clip_image_encoder(MODEL, str(missing), "cpu")
    with pytest.raises(ClipCheckpointError, match="no_such_weights.pt"):
        clip_patch_targets(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), model_name=MODEL,
                           pretrained=str(missing), cache_dir=tmp_path)


def test_unloadable_checkpoint_file(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipCheckpointError, match="broken.pt"):
        load_clip_image_encoder(MODEL, str(bad), "cpu")


def test_local_checkpoint_file_loads(tmp_path, patches, targets):
    emb, _ = targets
    model, *_ = load_clip_image_encoder(MODEL, None, "cpu")
    ckpt = tmp_path / "vit_s32_random.pt"
    torch.save(model.state_dict(), ckpt)
    del model
    got = clip_patch_targets(patches, model_name=MODEL, pretrained=str(ckpt), cache_dir=tmp_path)
    assert torch.allclose(got, emb, atol=1e-5)
    os.unlink(ckpt)


def test_unknown_model_and_tag():
    with pytest.raises(ClipCheckpointError, match="ViT-B-32"):
        load_clip_image_encoder("ViT-Nope-99", None, "cpu")
    with pytest.raises(ClipCheckpointError, match="openai"):  # lists the valid tags
        load_clip_image_encoder("ViT-B-32", "not_a_tag", "cpu")


def test_hub_tag_unavailable_offline_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipCheckpointError) as info:
        load_clip_image_encoder("ViT-B-32", "laion2b_s34b_b79k", "cpu", weights_cache_dir=tmp_path)
    msg = str(info.value)
    assert "could not fetch" in msg and "local file path" in msg
    assert info.value.__cause__ is None  # one error, not a chain of retries
