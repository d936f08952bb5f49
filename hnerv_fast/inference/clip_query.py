"""Query embeddings for patch search, from the open_clip model a run's CLIP targets came from (its `clip` section).

An image query goes through `clip_targets_for` (the targets' own function), so it is resized, normalised and encoded exactly as the
training patches were (the whole image is one "patch": resized to the encoder's input size without keeping its
aspect ratio); its embedding is cached beside the search's prediction cache. A text query uses the same model's
text tower and open_clip's tokenizer for that model name. Both return a float32 ``[D]`` unit vector on the CPU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hnerv_fast.config.dual import ClipConfig
from hnerv_fast.data.clip_targets import clip_targets_for, load_clip_image_encoder
from hnerv_fast.errors import UserError


class QueryError(UserError, ValueError):
    """A search query that cannot be embedded (unreadable image, empty text, tokenizer unavailable)."""


def load_query_image(path: str | Path) -> torch.Tensor:
    """An image file -> uint8 ``[1, 3, H, W]`` RGB (grey and RGBA images are converted)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise QueryError(f"--image {path}: no such file")
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise QueryError(f"--image {path}: not a readable image ({exc})") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).unsqueeze(0)


def image_query_embedding(path: str | Path, clip: ClipConfig, cache_dir: str | Path,
                          device: torch.device) -> torch.Tensor:
    image = load_query_image(path)
    embedding = clip_targets_for(image, clip, device, key="query", cache_dir=cache_dir)
    return embedding[0]


def text_query_embedding(text: str, clip: ClipConfig, device: torch.device) -> torch.Tensor:
    if not text.strip():
        raise QueryError("--text is empty")
    import open_clip

    model, *_ = load_clip_image_encoder(clip.model, clip.pretrained, device)  # the whole CLIP model, text tower too
    try:
        tokenizer = open_clip.get_tokenizer(str(clip.model).replace("/", "-"))
    except Exception as exc:  # e.g. a Hugging Face tokenizer that is not in the local cache
        raise QueryError(f"no text tokenizer for CLIP model {clip.model!r}: {type(exc).__name__}: {exc}") from None
    with torch.no_grad():
        embedding = model.encode_text(tokenizer([text]).to(device)).float()
    return F.normalize(embedding, dim=-1)[0].cpu()
