"""Per-frame and per-patch quality of a trained dual-head HNeRV on its own video: PSNR, SSIM, MS-SSIM and the CLIP
head's similarity to the patch's CLIP target, for the run's training and validation frames.

    python -m hnerv_fast.evaluate --checkpoint output/patch_dual/tiny/<run>/latest.pt --out eval/ [--fractional]

Writes to --out: frames.csv (frame, split, psnr, ssim, ms_ssim, clip_sim), patches.csv (frame, split, row, col,
psnr, ssim, ms_ssim, clip_sim), summary.json (per-split means and spreads) and psnr_per_frame.png.

Definitions, as the trainer's evaluation: patch PSNR = -10 log10(MSE + 1e-9); frame PSNR and frame CLIP similarity
= the mean over the frame's patches; CLIP similarity = cosine between the CLIP head's prediction and the patch's
CLIP target (the run's `clip` model, cached in --clip-cache). The model runs in float32, as the trainer's
evaluation does (it runs outside the step's autocast). SSIM / MS-SSIM follow hnerv_fast/ops/reference.py: MS-SSIM
uses the largest number of scales (at most 5) whose every scale still holds the 11-px window, weights renormalised
(2 scales on 32x32 patches); frame SSIM / MS-SSIM are of the whole frame put together from its patches; images
under 11 px get none (empty cells, null).

--fractional also decodes the patch grid shifted by half a patch: between horizontally adjacent patches
(middle_h), vertically adjacent ones (middle_v) and where four meet (corner), each against the ground-truth crop
at that position (only crops inside the frame), next to the trained centres (centre): fractional.csv and a
`fractional` section in summary.json (per category and split, with the PSNR drop from the centres).
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from hnerv_fast.data.clip_targets import clip_targets_for
from hnerv_fast.data.patches import from_patches, sample_ids, to_patches
from hnerv_fast.device import resolve_device
from hnerv_fast.errors import UserError, report
from hnerv_fast.inference.dual import TrainedDual, load_trained_dual
from hnerv_fast.inference.plots import psnr_per_frame_plot
from hnerv_fast.ops import patch_psnr, reference
from hnerv_fast.inference.cli import model_command_parser

METRICS = ("psnr", "ssim", "ms_ssim")
COLUMNS = (*METRICS, "clip_sim")
# (category, half-patch steps down, half-patch steps right) of the fractional evaluation
FRACTIONAL = (("middle_h", 0, 1), ("middle_v", 1, 0), ("corner", 1, 1))


class EvaluateError(UserError, ValueError):
    """Bad input to the evaluation (output folder, a video that does not match the checkpoint)."""


def ssim_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, list[float | None]]:
    """SSIM and MS-SSIM per image of float ``[N, 3, h, w]`` pairs in [0, 1]; None for images under 11 px."""
    if min(pred.shape[-2:]) < reference.SSIM_WIN_SIZE:
        return {"ssim": [None] * len(pred), "ms_ssim": [None] * len(pred)}
    return {"ssim": reference.ssim_per_sample(pred, target).tolist(),
            "ms_ssim": reference.ms_ssim_per_sample(pred, target).tolist()}


def image_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, list[float | None]]:
    """PSNR, SSIM and MS-SSIM per image (see `ssim_metrics`)."""
    return {"psnr": patch_psnr(pred, target).tolist(), **ssim_metrics(pred, target)}


def _frame_means(values: list[float], count: int) -> list[float]:
    return torch.tensor(values, dtype=torch.float64).view(-1, count).mean(dim=1).tolist()


def _crops(frames: torch.Tensor, patch_hw: tuple[int, int], positions: list[tuple[int, int]],
           offset: tuple[int, int]) -> torch.Tensor:
    """``[T * len(positions), 3, ph, pw]``: per frame, the crop of each grid position moved by ``offset`` pixels."""
    ph, pw = patch_hw
    dy, dx = offset
    crops = [frames[:, :, r * ph + dy:(r + 1) * ph + dy, c * pw + dx:(c + 1) * pw + dx] for r, c in positions]
    return torch.stack(crops, dim=1).flatten(0, 1)


def fractional_rows(model: TrainedDual, frames: torch.Tensor, frame_ids: list[int], labels: list[str],
                    batch_size: int) -> list[dict]:
    """Metrics of the half-patch-shifted positions of ``frame_ids`` (``frames`` is their float ground truth)."""
    ph, pw = model.patch_hw
    rows, cols = model.grid.rows, model.grid.cols
    out = []
    for category, sy, sx in FRACTIONAL:
        offset = (sy * (ph // 2), sx * (pw // 2))
        positions = [(r, c) for r in range(rows - sy) for c in range(cols - sx)]
        if not positions or (sy and offset[0] == 0) or (sx and offset[1] == 0):
            continue  # a 1-row / 1-column grid or 1-px patches have no such position
        shift = (offset[0] / ph, offset[1] / pw)  # whole pixels, so the prediction and the crop are aligned
        keep = torch.tensor([r * cols + c for r, c in positions])
        coords = model.coords(torch.tensor(frame_ids), shift).view(len(frame_ids), rows * cols, 3)[:, keep]
        coords = coords.reshape(-1, 3)
        rgb, _ = model.predict(coords, batch_size)
        metrics = image_metrics(rgb, _crops(frames, (ph, pw), positions, offset))
        for k, (cx, cy) in enumerate(coords[:, 1:].tolist()):
            f = frame_ids[k // len(positions)]
            r, c = positions[k % len(positions)]
            out.append({"frame": f, "split": labels[f], "category": category, "row": r, "col": c,
                        "cx": round(cx, 6), "cy": round(cy, 6), **{m: metrics[m][k] for m in METRICS}})
    return out


def evaluate(checkpoint: str | Path, out: str | Path, device: str = "auto", clip_cache: str | Path | None = None,
             fractional: bool = False, batch_size: int = 256) -> dict:
    """Evaluate ``checkpoint`` on its run's train and validation frames; write the files; return summary.json's dict."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EvaluateError(f"--out {out} exists and is not a folder")
    dev = resolve_device(device, "--device")
    model = load_trained_dual(checkpoint, dev)
    cfg, grid = model.cfg, model.grid
    frames = model.ground_truth()
    labels = model.split_labels()
    frame_ids = [f for f, s in enumerate(labels) if s != "-"]
    patches = to_patches(frames, grid)
    # the trainer's call: the same cache entry when --clip-cache is the run's (the default)
    targets = clip_targets_for(patches, cfg.clip, dev, key=grid.key, cache_dir=clip_cache)

    frame_rows, patch_rows, shifted_rows = [], [], []
    per_chunk = max(1, batch_size // grid.count)
    for start in tqdm(range(0, len(frame_ids), per_chunk), desc="evaluate", unit="chunk", leave=False):
        chunk = frame_ids[start:start + per_chunk]
        ids = sample_ids(torch.tensor(chunk), grid)
        rgb, embedding = model.predict(model.coords(torch.tensor(chunk)), batch_size)
        target = patches[ids].to(dev).float() / 255.0
        patch = image_metrics(rgb, target)
        patch["clip_sim"] = F.cosine_similarity(embedding, targets[ids].to(dev), dim=-1).tolist()
        whole = {**ssim_metrics(from_patches(rgb, grid), from_patches(target, grid)),
                 # the trainer's frame PSNR and CLIP similarity: the means over the frame's patches
                 **{m: _frame_means(patch[m], grid.count) for m in ("psnr", "clip_sim")}}
        positions = [(f, r, c) for f in chunk for r in range(grid.rows) for c in range(grid.cols)]  # as `ids`
        patch_rows += [{"frame": f, "split": labels[f], "row": r, "col": c, **{m: patch[m][k] for m in COLUMNS}}
                       for k, (f, r, c) in enumerate(positions)]
        frame_rows += [{"frame": f, "split": labels[f], **{m: whole[m][j] for m in COLUMNS}}
                       for j, f in enumerate(chunk)]
        if fractional:
            shifted_rows += fractional_rows(model, frames[chunk].to(dev).float() / 255.0, chunk, labels, batch_size)

    summary = _summary(model, checkpoint, clip_cache or model.cfg.clip.cache_dir, frame_rows, patch_rows)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvaluateError(f"--out {out}: cannot create it ({exc})") from None
    _write_csv(out / "frames.csv", frame_rows)
    _write_csv(out / "patches.csv", patch_rows)
    if fractional:
        centres = [{"frame": p["frame"], "split": p["split"], "category": "centre", "row": p["row"], "col": p["col"],
                    "cx": round((p["col"] + 0.5) / grid.cols, 6), "cy": round((p["row"] + 0.5) / grid.rows, 6),
                    **{m: p[m] for m in METRICS}} for p in patch_rows]  # the trained positions: patches.csv's values
        _write_csv(out / "fractional.csv", centres + shifted_rows)
        summary["fractional"] = _fractional_summary(centres + shifted_rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    psnr_per_frame_plot([r["frame"] for r in frame_rows], [r["psnr"] for r in frame_rows],
                        [r["split"] for r in frame_rows], out / "psnr_per_frame.png",
                        title=f"PSNR per frame: {Path(checkpoint).parent.name}/{Path(checkpoint).name}")
    return summary


# ------------------------------------------------------------------------------------------ summaries and files
def _stats(values: list[float | None], prefix: str, spread: bool = False) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {f"{prefix}_mean": None}
    t = torch.tensor(present, dtype=torch.float64)
    stats = {f"{prefix}_mean": t.mean().item()}
    if spread:  # population std, as the trainer's Eval/PSNR_Stats
        stats.update({f"{prefix}_std": t.std(correction=0).item(), f"{prefix}_min": t.min().item(),
                      f"{prefix}_max": t.max().item()})
    return stats


def _summary(model: TrainedDual, checkpoint: str | Path, clip_cache, frame_rows: list[dict],
             patch_rows: list[dict]) -> dict:
    ph, pw = model.patch_hw
    splits = {}
    for split in ("train", "val"):
        frames = [r for r in frame_rows if r["split"] == split]
        patches = [r for r in patch_rows if r["split"] == split]
        entry = {"frames": len(frames), "patches": len(patches)}
        if frames:
            entry.update({**_stats([r["psnr"] for r in frames], "frame_psnr", spread=True),
                          **_stats([r["psnr"] for r in patches], "patch_psnr", spread=True),
                          **_stats([r["ssim"] for r in frames], "frame_ssim"),
                          **_stats([r["ms_ssim"] for r in frames], "frame_ms_ssim"),
                          **_stats([r["ssim"] for r in patches], "patch_ssim"),
                          **_stats([r["ms_ssim"] for r in patches], "patch_ms_ssim"),
                          **_stats([r["clip_sim"] for r in frames], "clip_sim"),
                          **_stats([r["clip_sim"] for r in patches], "patch_clip_sim", spread=True)})
        splits[split] = entry
    return {
        "checkpoint": str(checkpoint), "device": str(model.device), "precision": "float32",
        "video": {"num_frames": model.num_frames, "height": model.height, "width": model.width},
        "grid": [model.grid.rows, model.grid.cols], "patch_size": [ph, pw],
        "ms_ssim_scales": {"patch": reference.ms_ssim_levels(ph, pw),
                           "frame": reference.ms_ssim_levels(model.height, model.width)},
        "clip": {"model": model.cfg.clip.model, "pretrained": model.cfg.clip.pretrained, "cache_dir": str(clip_cache)},
        "splits": splits,
    }


def _fractional_summary(rows: list[dict]) -> dict:
    summary: dict = {}
    for category in ("centre", *(name for name, _, _ in FRACTIONAL)):
        for split in ("train", "val"):
            mine = [r for r in rows if r["category"] == category and r["split"] == split]
            if mine:
                summary.setdefault(category, {})[split] = {
                    "positions": len(mine), **_stats([r["psnr"] for r in mine], "psnr", spread=True),
                    **_stats([r["ssim"] for r in mine], "ssim"), **_stats([r["ms_ssim"] for r in mine], "ms_ssim")}
    for category, per_split in summary.items():
        for split, entry in per_split.items():
            entry["psnr_drop_db"] = summary["centre"][split]["psnr_mean"] - entry["psnr_mean"]
    return summary


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else (f"{v:.6f}" if isinstance(v, float) else v)
                             for k, v in row.items()})


def main(argv: list[str] | None = None) -> int:
    parser = model_command_parser("hnerv_fast.evaluate", __doc__, "dual-head checkpoint: a run's best.pt / latest.pt")
    parser.add_argument("--out", required=True, help="output folder (frames.csv, patches.csv, summary.json, PNG)")
    parser.add_argument("--clip-cache", default=None,
                        help="CLIP target cache folder (default: the run's clip.cache_dir, relative to here)")
    parser.add_argument("--fractional", action="store_true",
                        help="also evaluate half-patch-shifted positions (fractional.csv)")
    parser.add_argument("--batch-size", type=int, default=256, help="patches per forward pass")
    args = parser.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise EvaluateError(f"--batch-size must be >= 1, got {args.batch_size}")
        summary = evaluate(args.checkpoint, args.out, args.device, args.clip_cache, args.fractional, args.batch_size)
    except UserError as exc:
        return report(exc)
    for split, entry in summary["splits"].items():
        if entry["frames"]:
            print(f"{split}: {entry['frames']} frames, frame PSNR {entry['frame_psnr_mean']:.2f} dB, "
                  f"CLIP similarity {entry['clip_sim_mean']:.4f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
