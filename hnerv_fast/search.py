"""Find the patches of a trained video that match a text or an image, through the model's CLIP head.

    python -m hnerv_fast.search --checkpoint output/patch_dual/tiny/<run>/latest.pt --text "a red car" --top-k 5
    python -m hnerv_fast.search --checkpoint <run>/best.pt --image query.png --split val --sheet top.png

Every (frame, patch) of the video is ranked by the cosine similarity between the query's CLIP embedding and the
CLIP head's prediction for that patch. The query is embedded by the run's own CLIP model (its `clip` section:
model name and weights): a text by that model's text tower and open_clip tokenizer, an image exactly as the
training patches were (resized whole to the encoder's input, normalised). With random CLIP weights
(clip.pretrained null) text queries run but carry no meaning.

The CLIP head's predictions of all patches are computed once per checkpoint, in float32, and cached in
--cache-dir (default: search_cache/ beside the checkpoint) under the SHA-256 of the checkpoint file's content, so a
later search (of any query) reads them without running the model, a rewritten latest.pt gets new ones and a copied
file reuses them. Image query embeddings are cached there too.

Prints a table (rank, frame, split, patch row / column, score) and writes --sheet, a contact sheet of the top
patches as they are in the ground-truth video, each labelled with its rank, frame, patch and score.
Bad input (checkpoint, query, options): one `error:` line and exit code 2.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from hnerv_fast.atomic import save_atomic
from hnerv_fast.checkpoint_io import CheckpointError
from hnerv_fast.data.patches import to_patches
from hnerv_fast.device import resolve_device
from hnerv_fast.errors import UserError, report
from hnerv_fast.inference.clip_query import image_query_embedding, text_query_embedding
from hnerv_fast.inference.dual import TrainedDual, load_trained_dual
from hnerv_fast.inference.plots import contact_sheet
from hnerv_fast.inference.cli import model_command_parser

SPLITS = ("all", "train", "val")


class SearchError(UserError, ValueError):
    """Bad search options (query, top-k, split)."""


@dataclass(frozen=True)
class Hit:
    rank: int
    frame: int
    row: int
    col: int
    split: str  # "train", "val" or "-" (in neither)
    score: float  # cosine similarity in [-1, 1]


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 hex digest of the file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                h.update(block)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    return h.hexdigest()


def prediction_cache_path(digest: str, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"clip_predictions_{digest[:32]}.pt"


def patch_embeddings(model: TrainedDual, digest: str, cache_dir: str | Path,
                     batch_size: int = 256) -> tuple[torch.Tensor, bool]:
    """(the CLIP head's float32 unit embeddings ``[num_frames * grid.count, D]`` on the CPU, in sample-id order;
    whether they came from the cache). ``digest`` is `checkpoint_digest` of the model's file, taken before the
    model was loaded from it; a miss computes the embeddings and writes them to the cache atomically."""
    path = prediction_cache_path(digest, cache_dir)
    count = model.num_frames * model.grid.count
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)["embeddings"]
        except Exception:  # noqa: BLE001 - an unreadable cache is recomputed
            cached = None
        if isinstance(cached, torch.Tensor) and cached.dim() == 2 and cached.shape[0] == count:
            return cached, True
    per_chunk = max(1, batch_size // model.grid.count)  # frames per call: only one chunk's RGB is held at a time
    parts = []
    for start in tqdm(range(0, model.num_frames, per_chunk), desc="CLIP-head predictions", unit="chunk", leave=False):
        times = torch.arange(start, min(start + per_chunk, model.num_frames))
        parts.append(model.predict(model.coords(times), batch_size)[1].cpu())
    embeddings = torch.cat(parts)
    # A checkpoint rewritten since it was hashed (a running trainer's latest.pt) must not file these predictions
    # under its old content's key.
    if checkpoint_digest(model.path) == digest:
        save_atomic({"embeddings": embeddings, "checkpoint": str(model.path), "precision": "float32",
                     "grid": [model.grid.rows, model.grid.cols], "num_frames": model.num_frames}, path)
    return embeddings, False


def rank_patches(embeddings: torch.Tensor, query: torch.Tensor, candidates: torch.Tensor,
                 top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, sample ids) of the ``top_k`` candidate sample ids most similar to ``query``, best first.
    Both sides are unit vectors, so the dot product is the cosine similarity."""
    scores = embeddings[candidates] @ query
    best = scores.topk(min(top_k, len(candidates)))
    return best.values, candidates[best.indices]


def _writable_folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(f"--cache-dir {path}: cannot create it ({exc})") from None
    if not os.access(path, os.W_OK):
        raise SearchError(f"--cache-dir {path} is not writable (pass another --cache-dir)")
    return path


def _query(model: TrainedDual, text: str | None, image: str | None, cache_dir: Path) -> torch.Tensor:
    if text is not None:
        return text_query_embedding(text, model.cfg.clip, model.device)
    return image_query_embedding(image, model.cfg.clip, cache_dir, model.device)


def search(checkpoint: str | Path, *, text: str | None = None, image: str | None = None, top_k: int = 10,
           split: str = "all", sheet: str | Path | None = None, cache_dir: str | Path | None = None,
           device: str = "auto") -> list[Hit]:
    """The ``top_k`` patches of ``split`` most similar to the query (text or image), best first; with ``sheet``,
    their ground-truth contact sheet is written there."""
    if top_k < 1:
        raise SearchError(f"--top-k must be >= 1, got {top_k}")
    if split not in SPLITS:
        raise SearchError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if (text is None) == (image is None):
        raise SearchError("give exactly one query: --text TEXT or --image FILE")
    if sheet is not None and Path(sheet).suffix.lower() != ".png":
        raise SearchError(f"--sheet {sheet}: the contact sheet is a PNG file (name it *.png)")
    dev = resolve_device(device, "--device")
    digest = checkpoint_digest(checkpoint)  # before loading: the cache key of the weights about to be read
    model = load_trained_dual(checkpoint, dev)
    if not model.has_clip_head:
        raise SearchError(f"{checkpoint} was compressed without its CLIP head (--no-clip-head): it cannot answer "
                          f"CLIP queries; search the run's checkpoint or a file compressed with the head")
    cache_dir = _writable_folder(Path(cache_dir) if cache_dir is not None else Path(checkpoint).parent / "search_cache")
    labels = model.split_labels()
    frames = [f for f, s in enumerate(labels) if split == "all" or s == split]
    if not frames:
        raise SearchError(f"--split {split}: the run's data.data_split {model.cfg.data.data_split!r} has no "
                          f"{split} frame")
    query = _query(model, text, image, cache_dir)
    embeddings, _ = patch_embeddings(model, digest, cache_dir)
    if query.shape[-1] != embeddings.shape[1]:
        raise SearchError(f"the query embedding has {query.shape[-1]} values but the CLIP head predicts "
                          f"{embeddings.shape[1]}: the query must use the run's CLIP model {model.cfg.clip.model!r}")
    count, cols = model.grid.count, model.grid.cols
    candidates = (torch.tensor(frames).view(-1, 1) * count + torch.arange(count)).reshape(-1)
    scores, ids = rank_patches(embeddings, query, candidates, top_k)
    hits = []
    for rank, (score, sid) in enumerate(zip(scores.tolist(), ids.tolist()), start=1):
        frame, (row, col) = sid // count, divmod(sid % count, cols)
        hits.append(Hit(rank, frame, row, col, labels[frame], score))
    if sheet is not None:
        patches = to_patches(model.ground_truth(), model.grid)[ids]
        captions = [f"#{h.rank} f{h.frame} r{h.row}c{h.col}\n{h.score:.4f} {h.split}" for h in hits]
        try:
            contact_sheet(patches, captions, sheet)
        except OSError as exc:
            raise SearchError(f"--sheet {sheet}: cannot write it ({exc})") from None
    return hits


def format_table(hits: list[Hit]) -> str:
    lines = [f"{'rank':>4}  {'frame':>5}  {'split':<5}  {'row':>3}  {'col':>3}  {'score':>7}"]
    lines += [f"{h.rank:>4}  {h.frame:>5}  {h.split:<5}  {h.row:>3}  {h.col:>3}  {h.score:>7.4f}" for h in hits]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = model_command_parser("hnerv_fast.search", __doc__, "dual-head checkpoint: a run's best.pt / latest.pt")
    parser.add_argument("--text", default=None, help="text query (the run's CLIP text encoder)")
    parser.add_argument("--image", default=None, help="image query file (PNG, JPEG, ...)")
    parser.add_argument("--top-k", type=int, default=10, help="how many patches to list (default 10)")
    parser.add_argument("--split", default="all", help="frames to search: all (default), train or val")
    parser.add_argument("--sheet", default="search_results.png",
                        help="contact sheet PNG of the top patches (ground truth); default search_results.png")
    parser.add_argument("--cache-dir", default=None,
                        help="prediction / query cache folder (default: search_cache/ beside the checkpoint)")
    args = parser.parse_args(argv)
    try:
        hits = search(args.checkpoint, text=args.text, image=args.image, top_k=args.top_k, split=args.split,
                      sheet=args.sheet, cache_dir=args.cache_dir, device=args.device)
    except UserError as exc:
        return report(exc)
    print(format_table(hits))
    print(f"wrote {args.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
