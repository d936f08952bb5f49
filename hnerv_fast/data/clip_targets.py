"""CLIP image-embedding targets per patch, computed once and cached on disk.

Model choice:
  * ``ViT-B-32`` (512-d) is the real default (with a pretrained tag such as ``openai`` or a local
    checkpoint file).
  * ``SMALL_CLIP_MODEL = "ViT-S-32"`` (384-d) with ``pretrained=None`` is the model for tests and
    tiny configs: on 2 CPU cores it embeds 320 patches in ~4.5 s versus ~18 s for ViT-B-32
    (both at their native 224 x 224 input). Its targets come from a randomly initialised network
    (fixed seed), which is fine for exercising the pipeline but carries no semantics.
    Read the target dimension from the returned tensor (``targets.shape[1]``), not a constant.

Weights are never fetched silently in a loop: a hub tag is looked up in the local caches first,
then fetched at most once; any failure becomes ONE :class:`ClipCheckpointError` that suggests
passing a local checkpoint path. Set ``HF_HUB_OFFLINE=1`` to skip the network attempt entirely.

This module must not import ``hnerv_fast.train``, ``hnerv_fast.logging`` or ``hnerv_fast.models``.
``open_clip`` is imported lazily, so a cache hit never pays for it.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from hnerv_fast import precision
from hnerv_fast.atomic import ensure_parent, save_atomic
from hnerv_fast.config.dual import ClipConfig
from hnerv_fast.errors import UserError

__all__ = [
    "ClipCheckpointError",
    "DEFAULT_CLIP_MODEL",
    "SMALL_CLIP_MODEL",
    "RANDOM_INIT_SEED",
    "load_clip_image_encoder",
    "clip_patch_targets",
    "clip_cache_path",
]

DEFAULT_CLIP_MODEL = "ViT-B-32"
SMALL_CLIP_MODEL = "ViT-S-32"
RANDOM_INIT_SEED = 0
_NO_WEIGHTS = (None, "", "none", "None", "NONE", "random")

_log = logging.getLogger(__name__)


class ClipCheckpointError(UserError, RuntimeError):
    """The CLIP model or its weights could not be set up; the message says what to do."""


def _is_random(pretrained) -> bool:
    return pretrained is None or str(pretrained).strip() in _NO_WEIGHTS


def _env_offline() -> bool:
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(key, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants

        return bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except Exception:  # pragma: no cover - huggingface_hub missing
        return False


def _hf_file_url(repo_id: str, filename: str) -> str:
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:  # pragma: no cover
        endpoint = "https://huggingface.co"
    return f"{endpoint.rstrip('/')}/{repo_id}/resolve/main/{filename}"


def _probe_once(url: str, timeout: float = 10.0) -> None:
    """One HEAD request (honours *_proxy env vars); raises on no connection or HTTP >= 400."""
    import urllib.request

    req = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(req, timeout=timeout):
        pass


def _resolve_tag(model_name: str, tag: str, cfg: dict, weights_cache_dir: str | None) -> str:
    """Local file for a pretrained tag: local caches first, then at most one download try."""
    hint = (
        f"could not fetch CLIP weights for model {model_name!r}, pretrained tag {tag!r}. "
        f"Download the checkpoint elsewhere and pass its local file path as clip.pretrained=<path> "
        f"(or use clip.pretrained=null for a randomly initialised encoder)."
    )
    if "file" in cfg:
        if os.path.isfile(cfg["file"]):
            return cfg["file"]
        raise ClipCheckpointError(f"{hint} (tag points at missing file {cfg['file']!r})")

    hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    candidates = []  # (repo_id, filename)
    if hub:
        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        candidates = [(repo_id, n) for n in names]

    # 1) local caches only: no network
    url_target = None
    if url:
        url_dir = weights_cache_dir or os.path.expanduser("~/.cache/clip")
        url_target = os.path.join(url_dir, os.path.basename(url))
        if os.path.isfile(url_target):
            return url_target
    hf_download = None
    if candidates:
        try:
            from huggingface_hub import hf_hub_download as hf_download
        except Exception:
            hf_download = None
    if hf_download is not None:
        for repo_id, name in candidates:
            try:
                return hf_download(repo_id=repo_id, filename=name, cache_dir=weights_cache_dir,
                                   local_files_only=True)
            except Exception:
                pass

    # 2) one network attempt, unless offline was requested
    if _env_offline():
        raise ClipCheckpointError(f"{hint} Not in the local cache and HF_HUB_OFFLINE is set.")
    try:
        if hf_download is not None:
            repo_id, name = candidates[-1]
            # huggingface_hub retries network errors with back-off (~30 s of log spam when
            # offline); probe the endpoint ONCE first and fail fast if it is unreachable.
            _probe_once(_hf_file_url(repo_id, name))
            return hf_download(repo_id=repo_id, filename=name, cache_dir=weights_cache_dir)
        if url_target is not None:
            import urllib.request

            os.makedirs(os.path.dirname(url_target), exist_ok=True)
            tmp = url_target + ".part"
            with urllib.request.urlopen(url, timeout=30) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            os.replace(tmp, url_target)
            return url_target
    except Exception as e:
        raise ClipCheckpointError(f"{hint} Download failed: {type(e).__name__}: {str(e)[:300]}") from None
    raise ClipCheckpointError(f"{hint} The tag has no download source.")


def load_clip_image_encoder(model_name: str, pretrained: str | None, device="cpu", *,
                            weights_cache_dir: str | Path | None = None):
    """Build an open_clip model for image encoding.

    Returns ``(model, mean, std, image_size)``: the open_clip CLIP model in eval mode with
    ``requires_grad=False`` (use ``model.encode_image``), ``mean``/``std`` as 3-tuples of floats,
    ``image_size`` as ``(H, W)``.

    ``pretrained``: None / "" / "none" / "random" -> random init with seed ``RANDOM_INIT_SEED`` inside
    ``torch.random.fork_rng`` (the caller's RNG is untouched); an existing file path -> loaded
    from it; an open_clip tag for this model (e.g. "openai") -> local cache, else one download
    try. Every failure raises :class:`ClipCheckpointError`.
    """
    try:
        import open_clip
    except Exception as e:  # pragma: no cover
        raise ClipCheckpointError(f"open_clip is not importable: {e}") from e

    name = str(model_name).replace("/", "-")
    if name not in open_clip.list_models():
        valid = open_clip.list_models()
        preferred = [m for m in (DEFAULT_CLIP_MODEL, SMALL_CLIP_MODEL, "ViT-B-16", "ViT-L-14", "RN50")
                     if m in valid]
        raise ClipCheckpointError(
            f"unknown CLIP model {model_name!r}; valid names include {', '.join(preferred)} "
            f"({len(valid)} in open_clip.list_models())"
        )

    checkpoint = None
    tag_cfg: dict = {}
    if not _is_random(pretrained):
        p = str(pretrained)
        tags = open_clip.list_pretrained_tags_by_model(name)
        looks_like_path = os.sep in p or "/" in p or p.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz"))
        if os.path.isfile(p):
            checkpoint = p
        elif looks_like_path or os.path.exists(p):
            raise ClipCheckpointError(
                f"CLIP checkpoint file not found (or not a regular file): {p!r} "
                f"(pretrained for model {name!r})"
            )
        elif open_clip.pretrained.is_pretrained_cfg(name, p):
            tag_cfg = open_clip.get_pretrained_cfg(name, p)
            checkpoint = _resolve_tag(name, p, tag_cfg,
                                      None if weights_cache_dir is None else str(weights_cache_dir))
        else:
            raise ClipCheckpointError(
                f"pretrained {p!r} is neither an existing file nor a known tag for CLIP model {name!r}; "
                f"valid tags: {', '.join(tags) if tags else '(none)'}; or pass a local checkpoint path, "
                f"or 'none' for random init"
            )

    kwargs = dict(device=device)
    if tag_cfg.get("quick_gelu"):
        kwargs["force_quick_gelu"] = True
    oc_logger = logging.getLogger()  # open_clip logs to the root logger
    old_level = oc_logger.level
    try:
        oc_logger.setLevel(max(old_level, logging.ERROR))  # silence "initialized randomly" warnings
        if checkpoint is None:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only (open_clip builds on CPU, then moves): torch.manual_seed would also
                # reseed every CUDA generator, which fork_rng(devices=[]) does not restore
                torch.random.default_generator.manual_seed(RANDOM_INIT_SEED)
                model = open_clip.create_model(name, pretrained=None, **kwargs)
        else:
            model = open_clip.create_model(name, pretrained=checkpoint, **kwargs)
    except ClipCheckpointError:
        raise
    except Exception as e:
        where = f"checkpoint {checkpoint!r}" if checkpoint else "random init"
        raise ClipCheckpointError(
            f"could not build CLIP model {name!r} from {where}: {type(e).__name__}: {str(e)[:300]}"
        ) from None
    finally:
        oc_logger.setLevel(old_level)

    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    mean = tuple(float(v) for v in tag_cfg.get("mean", pp.get("mean", open_clip.OPENAI_DATASET_MEAN)))
    std = tuple(float(v) for v in tag_cfg.get("std", pp.get("std", open_clip.OPENAI_DATASET_STD)))
    size = getattr(model.visual, "image_size", pp.get("size", 224))
    if isinstance(size, int):
        size = (size, size)
    image_size = (int(size[0]), int(size[1]))
    return model, mean, std, image_size


# --------------------------------------------------------------------------------------------
# cached targets
# --------------------------------------------------------------------------------------------
def _pretrained_key(pretrained) -> str:
    if _is_random(pretrained):
        return f"random-seed{RANDOM_INIT_SEED}"
    p = str(pretrained)
    if os.path.isfile(p):  # a local file: identify it by path, size and mtime (no full hash)
        st = os.stat(p)
        return f"file:{os.path.realpath(p)}:{st.st_size}:{st.st_mtime_ns}"
    return f"tag:{p.lower()}"


def clip_cache_path(patches_uint8: torch.Tensor, *, model_name: str, pretrained: str | None,
                    cache_dir: str | Path, cache_key_extra: str = "", amp: str = "none") -> Path:
    """Where :func:`clip_patch_targets` caches these patches: ``cache_dir/clip_<sha>.pt``."""
    h = hashlib.sha256()
    x = patches_uint8.detach().to("cpu").contiguous()
    precision_key = "" if amp == "none" else f"amp={amp}|"  # fp32 entries keep the key they always had
    h.update(f"v1|{str(model_name).replace('/', '-')}|{_pretrained_key(pretrained)}|"
             f"{tuple(x.shape)}|{x.dtype}|{cache_key_extra}|{precision_key}".encode())
    if _is_random(pretrained):
        # random-init weights depend on the open_clip version
        try:
            from importlib.metadata import version

            h.update(version("open_clip_torch").encode())
        except Exception:
            pass
    h.update(x.numpy().tobytes())
    return Path(cache_dir) / f"clip_{h.hexdigest()[:32]}.pt"


def _load_cache(path: Path, n: int):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        _log.warning("ignoring unreadable CLIP cache %s (%s); recomputing", path, e)
        return None
    emb = obj.get("embeddings") if isinstance(obj, dict) else obj
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or emb.shape[0] != n:
        _log.warning("ignoring malformed CLIP cache %s; recomputing", path)
        return None
    return emb.to(torch.float32)


def clip_patch_targets(
    patches_uint8: torch.Tensor,
    *,
    model_name: str,
    pretrained: str | None,
    cache_dir: str | Path,
    device="cpu",
    batch_size: int = 64,
    cache_key_extra: str = "",
    amp: str = "none",
) -> torch.Tensor:
    """float32 ``[N, D]`` L2-normalised CLIP image embeddings of uint8 patches ``[N, 3, h, w]``.

    Patches are resized (bicubic, antialiased) to the model's input size, normalised with its
    mean/std and embedded under ``torch.no_grad`` in batches of ``batch_size``. The result is
    cached at ``cache_dir/clip_<sha>.pt`` (key: patch bytes and shape, model name, pretrained,
    ``cache_key_extra``, ``amp``); a rerun loads it without building the model. Returned on CPU.
    ``amp``: a resolved precision of hnerv_fast/precision.py ("none" = fp32, "bf16", "fp16") for the encoder;
    the embeddings are normalised in fp32.
    """
    if not isinstance(patches_uint8, torch.Tensor) or patches_uint8.dtype != torch.uint8 \
            or patches_uint8.dim() != 4 or patches_uint8.shape[1] != 3:
        desc = (f"{patches_uint8.dtype} {tuple(patches_uint8.shape)}"
                if isinstance(patches_uint8, torch.Tensor) else type(patches_uint8).__name__)
        raise ValueError(f"clip_patch_targets: expected uint8 [N, 3, h, w] patches, got {desc}")
    if int(batch_size) <= 0:
        raise ValueError(f"clip_patch_targets: batch_size must be > 0, got {batch_size!r}")
    n = patches_uint8.shape[0]
    path = clip_cache_path(patches_uint8, model_name=model_name, pretrained=pretrained,
                           cache_dir=cache_dir, cache_key_extra=cache_key_extra, amp=amp)
    if path.is_file():
        cached = _load_cache(path, n)
        if cached is not None:
            return cached

    ensure_parent(path)  # an unusable cache folder fails now, not after the embedding
    model, mean, std, image_size = load_clip_image_encoder(model_name, pretrained, device)
    dev = torch.device(device)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for chunk in patches_uint8.split(int(batch_size)):
            x = chunk.to(dev, non_blocking=True).float().div_(255.0)
            if tuple(x.shape[-2:]) != image_size:
                x = F.interpolate(x, size=image_size, mode="bicubic", align_corners=False, antialias=True)
                x = x.clamp_(0.0, 1.0)  # bicubic overshoot
            x = (x - mean_t) / std_t
            with precision.autocast(amp, dev):
                emb = model.encode_image(x).float()
            out.append(F.normalize(emb, dim=-1).cpu())
    emb = torch.cat(out) if out else torch.zeros(0, int(getattr(model.visual, "output_dim", 0)))
    del model
    save_atomic({"embeddings": emb, "model_name": str(model_name),
                  "pretrained": _pretrained_key(pretrained), "shape": list(patches_uint8.shape)}, path)
    return emb


def clip_targets_for(patches_uint8: torch.Tensor, clip: ClipConfig, device: torch.device, *, key: str,
                     cache_dir: str | Path | None = None) -> torch.Tensor:
    """:func:`clip_patch_targets` with a run's `clip` section (model, weights, batch size, precision resolved for
    ``device``): what the trainer, the evaluation and a search query all embed with. ``key``: the cache key
    extra (a PatchGrid's ``key`` for a video's patches); ``cache_dir`` defaults to ``clip.cache_dir``."""
    return clip_patch_targets(
        patches_uint8, model_name=clip.model, pretrained=clip.pretrained,
        cache_dir=clip.cache_dir if cache_dir is None else cache_dir, device=device, batch_size=clip.batch_size,
        cache_key_extra=key, amp=precision.resolve_amp(clip.amp, torch.device(device)))
