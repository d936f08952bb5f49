"""Compress a trained dual-head HNeRV: quantise its weights, entropy-code them, write one file.

    python -m hnerv_fast.compress --checkpoint output/patch_dual/tiny/<run>/best.pt --out model.hnvc --bits 8

Weights (linear and convolution kernels) are quantised uniformly to ``--bits`` bits with an affine grid
per output channel (``--per channel``, default) or per tensor (``--per tensor``); biases stay float16.
The integer symbols are range coded (constriction) with one histogram per tensor. The file (format:
hnerv_fast/inference/compressed.py) holds the run's config and video geometry too, so
``python -m hnerv_fast.decode --checkpoint model.hnvc`` renders from it alone. ``--no-clip-head`` leaves
the CLIP head out: frames decode the same, but the file can no longer answer CLIP queries (search).

The report compares the original checkpoint with the written file: model bytes (fp32 weights vs file),
bits per pixel (bits / (num_frames x H x W)), and over all frames (training and validation) the frame PSNR
(mean of the frame's patch PSNRs, as the trainer logs it) and MS-SSIM of whole frames
(hnerv_fast/ops/reference.py: frames under 161 px on a side get fewer than 5 scales, with the first
weights renormalised; the report names the number of scales). Both models run in float32, as the trainer evaluates.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from hnerv_fast.atomic import write_bytes_atomic
from hnerv_fast.device import resolve_device
from hnerv_fast.errors import UserError, report
from hnerv_fast.inference.quantize import BITS_RANGE, GRANULARITIES
from hnerv_fast.inference.cli import model_command_parser


class CompressError(UserError, ValueError):
    """Bad input to the compressor."""


def frame_metrics(trained, frames: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Mean frame PSNR (mean of patch PSNRs per frame) and MS-SSIM of ``trained`` over uint8 ``frames``."""
    from tqdm import tqdm

    from hnerv_fast.data.patches import to_patches
    from hnerv_fast.ops import patch_psnr
    from hnerv_fast.ops.reference import ms_ssim_levels, ms_ssim_per_sample

    psnr, ms_ssim = [], []
    levels = ms_ssim_levels(trained.height, trained.width)
    count = trained.grid.count
    with tqdm(total=len(frames), unit="frame", desc=f"evaluate {trained.path.name}", disable=None) as bar:
        for start in range(0, len(frames), batch_size):
            target = frames[start:start + batch_size].to(trained.device).float() / 255
            times = torch.arange(start, start + len(target), dtype=torch.float64)
            pred = trained.frames(times, batch_size=len(target) * count)
            patches = patch_psnr(to_patches(pred, trained.grid), to_patches(target, trained.grid))
            psnr.append(patches.view(-1, count).mean(1))
            if levels:
                ms_ssim.append(ms_ssim_per_sample(pred, target))
            bar.update(len(target))
    return {"psnr": float(torch.cat(psnr).mean()), "ms_ssim": float(torch.cat(ms_ssim).mean()) if levels else None}


def compress(checkpoint: str | Path, out: str | Path, *, bits: int = 8, per: str = "channel",
             keep_clip_head: bool = True, batch_size: int = 8, device: str = "auto") -> dict:
    """Write the compressed file of ``checkpoint`` to ``out``; the report (sizes, coding, metrics) as a dict."""
    from hnerv_fast import checkpoint_io
    from hnerv_fast.inference import compressed
    from hnerv_fast.inference.dual import load_trained_dual, trained_dual_from_state
    from hnerv_fast.ops.reference import ms_ssim_levels

    checkpoint, out = Path(checkpoint), Path(out)
    if compressed.is_compressed(checkpoint):
        raise CompressError(f"{checkpoint} is already compressed; compress the run's checkpoint (best.pt) instead")
    if out.is_dir():
        raise CompressError(f"--out {out} is a folder; give the name of the file to write")
    if out.exists() and out.resolve() == checkpoint.resolve():
        raise CompressError(f"--out {out} is the checkpoint itself; choose another file name")
    if out.exists() and not compressed.is_compressed(out):  # e.g. the run's latest.pt: its resume state
        raise CompressError(f"--out {out} exists and is not a compressed model; it would be overwritten "
                            "(choose another file name, or remove it first)")
    dev = resolve_device(device, "--device")
    state = checkpoint_io.load(checkpoint, map_location="cpu")
    original = trained_dual_from_state(state, checkpoint, dev)
    frames = original.ground_truth()

    weights = state["model_state_dict"]
    broken = [name for name, tensor in weights.items() if not bool(torch.isfinite(tensor).all())]
    if broken:
        raise CompressError(f"{checkpoint} has non-finite weights in {', '.join(broken)}; nothing to compress")
    data, stats = compressed.encode_model(weights, config=state["config"], video=state["video"],
                                          epoch=state.get("epoch"), bits=bits, granularity=per,
                                          keep_clip_head=keep_clip_head)
    write_bytes_atomic(data, out)
    decoded = load_trained_dual(out, dev)  # measure what decode will read, not the in-memory weights

    pixels = original.num_frames * original.height * original.width
    fp32_bytes = 4 * sum(t.numel() for t in weights.values())
    return {
        "checkpoint": str(checkpoint), "out": str(out), "bits": bits, "per": per, "clip_head": keep_clip_head,
        "frames": original.num_frames, "height": original.height, "width": original.width,
        "ms_ssim_scales": ms_ssim_levels(original.height, original.width),
        "fp32_bytes": fp32_bytes, "file_bytes": stats.file_bytes,
        "bpp": {"original": 8 * fp32_bytes / pixels, "compressed": 8 * stats.file_bytes / pixels},
        "coding": asdict(stats),
        "metrics": {"original": frame_metrics(original, frames, batch_size),
                    "compressed": frame_metrics(decoded, frames, batch_size)},
    }


def format_report(r: dict) -> str:
    """The report as a small table (what the command prints)."""
    before, after = r["metrics"]["original"], r["metrics"]["compressed"]
    label = f"{r['bits']}-bit per {r['per']}" + ("" if r["clip_head"] else ", no CLIP head")
    scales = r["ms_ssim_scales"]
    ms_name = "MS-SSIM" if scales == 5 else f"MS-SSIM ({scales} scales)"
    c = r["coding"]

    def ms(v):
        return "n/a" if v is None else f"{v:.4f}"

    rows = [
        ("", "original (fp32)", f"compressed ({label})"),
        ("model bytes", f"{r['fp32_bytes']:,}",
         f"{r['file_bytes']:,}  ({r['fp32_bytes'] / r['file_bytes']:.2f}x smaller)"),
        ("bits per pixel", f"{r['bpp']['original']:.3f}", f"{r['bpp']['compressed']:.3f}"),
        ("frame PSNR (dB)", f"{before['psnr']:.2f}", f"{after['psnr']:.2f}  ({after['psnr'] - before['psnr']:+.2f})"),
        (ms_name, ms(before["ms_ssim"]), ms(after["ms_ssim"])),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    coded = c["stream_bytes"]
    lines.append(f"{r['frames']} frames of {r['height']}x{r['width']}; file: "
                 f"{coded:,} B coded weights ({100 * (coded / c['entropy_bytes'] - 1):+.3f}% over their entropy), "
                 f"{c['side_bytes']:,} B grids + histograms, {c['raw_bytes']:,} B biases, "
                 f"{c['header_bytes']:,} B header")
    if scales == 0:
        lines.append("MS-SSIM n/a: frames smaller than the 11-px SSIM window")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = model_command_parser("hnerv_fast.compress", __doc__, "a dual_hnerv run's best.pt / latest.pt")
    parser.add_argument("--out", required=True, help="the compressed file to write (e.g. model.hnvc)")
    parser.add_argument("--bits", type=int, default=8,
                        help=f"bits per weight, {BITS_RANGE[0]}..{BITS_RANGE[1]} (default 8)")
    parser.add_argument("--per", choices=GRANULARITIES, default="channel",
                        help="one quantisation grid per output channel (default) or per tensor")
    parser.add_argument("--no-clip-head", action="store_true",
                        help="leave the CLIP head out (frames decode the same; CLIP queries no longer work)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the report as JSON to PATH ('-': print only the JSON, on stdout)")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per batch when measuring (default 8)")
    args = parser.parse_args(argv)
    try:
        if not BITS_RANGE[0] <= args.bits <= BITS_RANGE[1]:
            raise CompressError(f"--bits must be in {BITS_RANGE[0]}..{BITS_RANGE[1]}, got {args.bits}")
        if args.batch_size < 1:
            raise CompressError(f"--batch-size must be >= 1, got {args.batch_size}")
        result = compress(args.checkpoint, args.out, bits=args.bits, per=args.per,
                          keep_clip_head=not args.no_clip_head, batch_size=args.batch_size, device=args.device)
    except UserError as exc:
        return report(exc)
    if args.json == "-":  # stdout stays machine-readable
        print(json.dumps(result, indent=2))
        return 0
    print(format_report(result))
    if args.json:
        write_bytes_atomic((json.dumps(result, indent=2) + "\n").encode(), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
