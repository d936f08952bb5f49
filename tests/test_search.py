"""python -m hnerv_fast.search: a ground-truth patch used as an image query finds its own patch; text queries run
mechanically (random-init text tower); the predictions are cached per checkpoint content; bad input.

Retrieval needs a CLIP head that has learned more than the tiny run's: the random-init ViT-S-32 targets of one patch
position in neighbouring frames differ by only 1 - cos ~ 2.4e-4 (median), while the tiny config's head ends at
1 - cos ~ 7.5e-3 (clip_weight 0.1, CLIP loss in 20 of 30 epochs). With it, 61 % of the 320 patches find themselves
or their position in a neighbouring frame at rank 1 (46 % with bf16 predictions, hence float32 in search). So the
retrieval tests train their own run (RETRIEVAL_TRAINING: clip_weight 3, the CLIP loss from epoch 3, 40 epochs):
1 - cos ~ 2.1e-3, 97 % of the patches at rank 1 themselves or a neighbour, 72 % exactly themselves (as measured).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hnerv_fast.config import load_config
from hnerv_fast.data.clip_targets import clip_targets_for
from hnerv_fast.data.patches import PatchGrid, to_patches
from hnerv_fast.data.video import load_frames
from hnerv_fast.inference.clip_query import text_query_embedding
from hnerv_fast.inference.compressed import encode_model
from hnerv_fast.inference.dual import TrainedDual, load_trained_dual
from hnerv_fast.inference.plots import tile_origin
from hnerv_fast.search import (
    checkpoint_digest,
    main,
    patch_embeddings,
    prediction_cache_path,
    rank_patches,
    search,
)
from hnerv_fast.train.trainer import run
from tests.conftest import TINY, overrides

ROOT = Path(__file__).resolve().parents[1]
VAL_FRAMES = {9, 19, 29, 39}
RETRIEVAL_TRAINING = ("loss.clip_weight=3.0", "loss.pixel_loss_warmup_epochs=2", "train.epochs=40")


@pytest.fixture(scope="module")
def retrieval_run(tmp_path_factory, clip_cache):
    """The tiny config with a CLIP head trained for retrieval (RETRIEVAL_TRAINING), its ground-truth patches."""
    tmp = tmp_path_factory.mktemp("search_run")
    cfg = load_config(TINY, overrides(tmp, clip_cache, *RETRIEVAL_TRAINING))
    folder = run(cfg)
    d = cfg.data
    frames = load_frames(d.source, d.path, num_frames=d.num_frames, height=d.height, width=d.width, seed=d.seed)
    return cfg, folder / "latest.pt", to_patches(frames, PatchGrid(d.patch_rows, d.patch_cols))


def is_self_or_neighbour(found: int, query: int, count: int = 8) -> bool:
    """The same patch position in the same or an adjacent frame (sample ids frame * count + position)."""
    return found % count == query % count and abs(found // count - query // count) <= 1


def test_image_query_finds_its_patch(retrieval_run, tmp_path, capsys):
    _, checkpoint, patches = retrieval_run
    frame, row, col = 17, 1, 2  # a training frame
    query = tmp_path / "query.png"
    Image.fromarray(patches[frame * 8 + row * 4 + col].permute(1, 2, 0).numpy()).save(query)
    sheet = tmp_path / "sheet.png"
    assert main(["--checkpoint", str(checkpoint), "--image", str(query), "--top-k", "5", "--sheet", str(sheet),
                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "frame", "split", "row", "col", "score"]
    table = [line.split() for line in lines[1:6]]
    rank, found_frame, split, found_row, found_col, score = table[0]
    assert (rank, found_row, found_col) == ("1", str(row), str(col)), table
    assert abs(int(found_frame) - frame) <= 1 and split == ("val" if int(found_frame) in VAL_FRAMES else "train")
    scores = [float(t[5]) for t in table]
    assert scores == sorted(scores, reverse=True) and 0.9 < scores[0] <= 1.0
    # the sheet's first tile is the rank-1 ground-truth patch, enlarged 4x (32 px -> 128 px)
    image = np.asarray(Image.open(sheet).convert("RGB"))
    x, y = tile_origin(0, (128, 128), columns=5)
    tile = image[y:y + 128:4, x:x + 128:4].transpose(2, 0, 1)
    np.testing.assert_array_equal(tile, patches[int(found_frame) * 8 + row * 4 + col].numpy())


def test_every_patch_finds_itself_or_its_neighbour(retrieval_run, tmp_path):
    cfg, checkpoint, patches = retrieval_run
    model = load_trained_dual(checkpoint, torch.device("cpu"))
    embeddings, cached = patch_embeddings(model, checkpoint_digest(checkpoint), tmp_path)
    assert not cached and embeddings.shape == (320, 384)
    queries = clip_targets_for(patches, cfg.clip, torch.device("cpu"), key="grid2x4")  # the trainer's targets
    found = [rank_patches(embeddings, q, torch.arange(320), 1)[1].item() for q in queries]
    hits = [is_self_or_neighbour(f, q) for q, f in enumerate(found)]
    assert np.mean(hits) >= 0.9, np.mean(hits)  # measured 0.97
    assert np.mean([f == q for q, f in enumerate(found)]) >= 0.5  # measured 0.72


def test_text_query_mechanics(tiny_dual_run, tmp_path):
    cfg, folder, _ = tiny_dual_run
    car = text_query_embedding("a red car", cfg.clip, torch.device("cpu"))
    boat = text_query_embedding("a blue boat", cfg.clip, torch.device("cpu"))
    assert car.shape == (384,) and car.dtype == torch.float32
    assert car.norm().item() == pytest.approx(1.0, abs=1e-5) and (car - boat).abs().max() > 1e-3
    hits = search(folder / "latest.pt", text="a red car", top_k=7, split="train", sheet=tmp_path / "s.png",
                  cache_dir=tmp_path, device="cpu")
    assert [h.rank for h in hits] == list(range(1, 8)) and all(h.split == "train" for h in hits)
    assert all(h.frame not in VAL_FRAMES and 0 <= h.row < 2 and 0 <= h.col < 4 for h in hits)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    cache = prediction_cache_path(checkpoint_digest(folder / "latest.pt"), tmp_path)
    embeddings = torch.load(cache, weights_only=True)["embeddings"]
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(320), atol=1e-5)
    for h in hits:  # the score is the cosine of the query and that patch's prediction
        assert h.score == pytest.approx((embeddings[h.frame * 8 + h.row * 4 + h.col] @ car).item(), abs=1e-5)
    train_scores = embeddings[[f * 8 + p for f in range(40) if f not in VAL_FRAMES for p in range(8)]] @ car
    assert scores[0] == pytest.approx(train_scores.max().item(), abs=1e-6)
    assert Image.open(tmp_path / "s.png").size == (5 * (128 + 6) + 6, 2 * (128 + 28 + 6) + 6)


def test_val_split_and_top_k_beyond_the_candidates(tiny_dual_run, tmp_path):
    folder = tiny_dual_run[1]
    hits = search(folder / "latest.pt", text="a red car", top_k=100, split="val", sheet=None, cache_dir=tmp_path,
                  device="cpu")
    assert len(hits) == 4 * 8 and {h.frame for h in hits} == VAL_FRAMES and {h.split for h in hits} == {"val"}


def test_predictions_are_cached_by_checkpoint_content(tiny_dual_run, tmp_path, monkeypatch):
    folder = tiny_dual_run[1]
    checkpoint = tmp_path / "run" / "model.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes((folder / "latest.pt").read_bytes())
    calls = []
    real_predict = TrainedDual.predict
    monkeypatch.setattr(TrainedDual, "predict", lambda self, *a, **k: calls.append(1) or real_predict(self, *a, **k))

    first = search(checkpoint, text="a red car", top_k=5, device="cpu")
    cache = prediction_cache_path(checkpoint_digest(checkpoint), checkpoint.parent / "search_cache")  # the default
    assert cache.is_file() and len(calls) > 0
    computed = len(calls)
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # written atomically: no temp file left
    assert search(checkpoint, text="a red car", top_k=5, device="cpu") == first and len(calls) == computed
    copy = tmp_path / "elsewhere" / "copy.pt"  # same content, another path: the same cache entry
    copy.parent.mkdir()
    copy.write_bytes(checkpoint.read_bytes())
    assert search(copy, text="a red car", top_k=5, cache_dir=cache.parent, device="cpu") == first
    assert len(calls) == computed

    state = torch.load(checkpoint, weights_only=True)  # rewritten in place (as latest.pt each epoch): new entry
    state["model_state_dict"]["clip_head.2.bias"] += 0.5
    torch.save(state, checkpoint)
    changed = search(checkpoint, text="a red car", top_k=5, device="cpu")
    assert len(calls) > computed and prediction_cache_path(checkpoint_digest(checkpoint), cache.parent) != cache
    assert [h.score for h in changed] != [h.score for h in first]


def test_a_checkpoint_rewritten_since_hashing_is_not_cached(tiny_dual_run, tmp_path):
    model = load_trained_dual(tiny_dual_run[1] / "latest.pt", torch.device("cpu"))
    stale = "0" * 64  # the digest of some earlier content of the file
    embeddings, cached = patch_embeddings(model, stale, tmp_path)
    assert not cached and embeddings.shape == (320, 384) and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["missing", "cascade", "neither", "both", "unreadable_image", "no_image",
                                  "top_k", "split", "sheet", "no_clip_head"])
def test_bad_input_is_one_line_exit_2(tiny_dual_run, tmp_path, capsys, case):
    latest = ["--checkpoint", str(tiny_dual_run[1] / "latest.pt")]
    torch.save({"config": {"task": "cascade"}, "model_state_dict": {}}, tmp_path / "stage.pt")
    (tmp_path / "broken.png").write_text("not an image")
    state = torch.load(tiny_dual_run[1] / "latest.pt", weights_only=True)
    headless, _ = encode_model(state["model_state_dict"], config=state["config"], video=state["video"],
                               epoch=state["epoch"], bits=8, granularity="channel", keep_clip_head=False)
    (tmp_path / "headless.hnvc").write_bytes(headless)
    args, expected = {
        "missing": (["--checkpoint", str(tmp_path / "nope.pt"), "--text", "x"], "not found"),
        "cascade": (["--checkpoint", str(tmp_path / "stage.pt"), "--text", "x"], "'cascade' checkpoint"),
        "neither": (latest, "exactly one query"),
        "both": (latest + ["--text", "x", "--image", str(tmp_path / "broken.png")], "exactly one query"),
        "unreadable_image": (latest + ["--image", str(tmp_path / "broken.png")], "not a readable image"),
        "no_image": (latest + ["--image", str(tmp_path / "absent.png")], "no such file"),
        "top_k": (latest + ["--text", "x", "--top-k", "0"], "--top-k"),
        "split": (latest + ["--text", "x", "--split", "test"], "--split"),
        "sheet": (latest + ["--text", "x", "--sheet", str(tmp_path / "sheet.jpg")], "PNG"),
        "no_clip_head": (["--checkpoint", str(tmp_path / "headless.hnvc"), "--text", "x"], "without its CLIP head"),
    }[case]
    capsys.readouterr()
    assert main(["--sheet", str(tmp_path / "sheet.png"), "--cache-dir", str(tmp_path / "c"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not (tmp_path / "sheet.png").exists()


def test_help():
    proc = subprocess.run([sys.executable, "-m", "hnerv_fast.search", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--image" in proc.stdout and "--top-k" in proc.stdout
