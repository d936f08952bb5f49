"""Generate a CT volume from X-rays with a trained cascade; optionally score it against the case's ground truth.

    python -m hnerv_fast.sample --checkpoint output/cascade_tiny/stage_32_final.pt \\
        --xray case_frontal.png --xray case_lateral.npy --out volume.nii.gz \\
        --reference case.nii.gz --json quality.json --preview volume.png

``--checkpoint`` is a stage checkpoint (``{stage}_best.pt`` / ``_epoch_N.pt`` / ``_final.pt``); the
stages before it in its cascade are loaded from ``{stage}_final.pt`` in the same folder (or
``--stages-dir``) and run first, coarse to fine, each conditioned on the previous one's sample.
X-rays: one file per view in the order of the training config's ``data.views`` (``.npy`` 2-D arrays
or ``.png`` grey images, resized to ``data.xray_size``), or a single ``.npy`` of shape ``[V, X, X]``.
They must be in the training data's units (mean attenuation along the ray, as the phantoms' X-rays).
Output: the last stage's volume ``[S, S, S]`` (float32, indexed D, H, W: D antero-posterior, H vertical,
W left-right) as ``.npy`` or NIfTI (``.nii`` / ``.nii.gz``, identity affine).

``--reference`` (``.npy`` / ``.nii`` / ``.nii.gz``, a 3-D cube, read like the CT-folder training data) is
brought to the sample's S^3 as the training data is: intensities mapped to [0, 1] (``--reference-intensity``;
``auto`` does what the checkpoint's training data did: per-volume min-max for a CT folder, as is for the
phantoms), then a trilinear resize. The sample's PSNR and 3D SSIM against it are printed (the metrics the
trainer logs as ``{stage}/val_psnr`` / ``val_ssim``; identical volumes give 100 dB, the metric's floor on the
MSE) and, with ``--json``, written as ``{psnr, ssim, stage, size, steps, seed}``.
``--preview`` writes a PNG of the axial, coronal and sagittal middle slices of the sample, and of the reference
below them (see hnerv_fast/inference/volume_preview.py). Files are written atomically.
Bad input: one ``error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hnerv_fast.atomic import write_bytes_atomic
from hnerv_fast.device import resolve_device
from hnerv_fast.errors import UserError, report
from hnerv_fast.inference.cli import model_command_parser


class SampleError(UserError, ValueError):
    """Bad input to the sampler (X-ray files, reference volume, output names, cascade checkpoints)."""


VOLUME_EXTS = (".npy", ".nii", ".nii.gz")
REFERENCE_INTENSITY = ("auto", "minmax", "none")


@dataclass
class SampleResult:
    volume: np.ndarray  # [S, S, S] float32, as written to --out
    stage: str
    steps: int
    seed: int
    reference: np.ndarray | None = None  # [S, S, S]: the reference as compared (normalised, resized)
    reference_intensity: str | None = None  # the mapping that was applied: minmax | none
    psnr: float | None = None
    ssim: float | None = None


def _volume_kind(path: Path, flag: str) -> str:
    name = path.name.lower()
    for ext in (".nii.gz", ".nii", ".npy"):
        if name.endswith(ext):
            return ext
    raise SampleError(f"{flag} {path}: unsupported extension (use one of {', '.join(VOLUME_EXTS)})")


def load_cascade(checkpoint: str | Path, device: torch.device, stages_dir: str | Path | None = None):
    """(stage models coarse to fine ending with ``checkpoint``'s stage, that checkpoint's state)."""
    from hnerv_fast.checkpoint_io import CheckpointError
    from hnerv_fast.models.cascade_io import load_stage_model

    checkpoint = Path(checkpoint)
    model, state = load_stage_model(checkpoint, device)
    name, order = state.get("stage"), list(state.get("cascade") or [])
    if name not in order:
        raise CheckpointError(f"{checkpoint} has no cascade order for its stage {name!r}")
    folder = Path(stages_dir) if stages_dir is not None else checkpoint.parent
    models = [load_stage_model(folder / f"{earlier}_final.pt", device)[0] for earlier in order[: order.index(name)]]
    models.append(model)
    last = models[-1]
    for m in models[:-1]:
        if m.views != last.views or m.xray_size != last.xray_size:
            raise SampleError(f"stage {m.name!r} takes {len(m.views)} view(s) {m.views} at "
                              f"{m.xray_size} px but {last.name!r} takes {last.views} at {last.xray_size} px")
    return models, state


def load_xrays(paths: list[str], views: tuple[str, ...], size: int) -> torch.Tensor:
    """X-ray files -> ``[1, V, size, size]`` float32."""
    from hnerv_fast.data.ct_folder import load_xray, resize_image

    if len(paths) == 1 and paths[0].lower().endswith(".npy"):
        try:
            arr = np.load(paths[0], allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            raise SampleError(f"cannot read X-ray {paths[0]}: {exc}") from exc
        if arr.ndim == 3:
            if arr.shape[0] != len(views):
                raise SampleError(f"--xray {paths[0]} holds {arr.shape[0]} view(s) but the model takes "
                                  f"{len(views)} {list(views)}")
            images = [torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in arr]
            return _finite(torch.stack([resize_image(img, size) for img in images])[None], paths)
    if len(paths) != len(views):
        raise SampleError(f"got {len(paths)} --xray file(s) but the model takes {len(views)} view(s) "
                          f"{list(views)} (one file per view, in that order)")
    return _finite(torch.stack([resize_image(torch.from_numpy(load_xray(p)), size) for p in paths])[None], paths)


def _finite(images: torch.Tensor, paths: list[str]) -> torch.Tensor:
    """A NaN or inf pixel would turn the whole sampled volume into NaN: refuse it here, by name."""
    if not bool(torch.isfinite(images).all()):
        raise SampleError(f"--xray {' '.join(paths)}: the X-ray holds NaN or infinite values")
    return images


def load_reference(path: str | Path) -> np.ndarray:
    """The ground-truth volume as stored (float32 ``[N, N, N]``), read by the CT-folder loader."""
    from hnerv_fast.data.ct_folder import load_volume

    path = Path(path)
    _volume_kind(path, "--reference")
    try:
        volume = load_volume(path)
    except UserError as exc:
        raise SampleError(f"--reference: {exc}") from exc
    if len(set(volume.shape)) != 1:
        raise SampleError(f"--reference {path}: volume {list(volume.shape)} (D, H, W) is not a cube "
                          f"(the sample is S^3)")
    return volume


def training_intensity(choice: str, state: dict) -> str:
    """``auto`` -> what the checkpoint's training data did: ``minmax`` for a CT folder, ``none`` for phantoms."""
    if choice != "auto":
        return choice
    source = state.get("config", {}).get("data", {}).get("source", "phantoms")
    return "minmax" if source == "folder" else "none"


def reference_at(volume: np.ndarray, size: int, intensity: str) -> torch.Tensor:
    """``[N, N, N]`` -> ``[size]*3`` float32 exactly as CTFolderDataset makes a stage's volume."""
    from hnerv_fast.data.ct_folder import normalize_intensity, resize_volume

    normalised = torch.from_numpy(np.ascontiguousarray(normalize_intensity(volume, intensity))).float()
    return resize_volume(normalised[None], size)[0]


def volume_bytes(volume: np.ndarray, kind: str) -> bytes:
    if kind == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, volume)
        return buffer.getvalue()
    import gzip

    import nibabel as nib

    data = nib.Nifti1Image(volume, np.eye(4)).to_bytes()
    return gzip.compress(data, compresslevel=1) if kind == ".nii.gz" else data  # level 1: nibabel's default


def sample(checkpoint: str | Path, xrays: list[str], out: str | Path, steps: int | None = None, seed: int = 0,
           device: str = "auto", stages_dir: str | Path | None = None, reference: str | Path | None = None,
           reference_intensity: str = "auto") -> SampleResult:
    """Sample the cascade ending at ``checkpoint``, write the volume to ``out`` and, given a ``reference``
    (read and checked before anything is sampled), score the sample against it."""
    from hnerv_fast.models.cascade_diffusion import sample_cascade
    from hnerv_fast.models.diffusion import CosineSchedule
    from hnerv_fast.models.volume_metrics import volume_psnr, volume_ssim

    out = Path(out)
    kind = _volume_kind(out, "--out")  # fail before loading anything
    raw_reference = load_reference(reference) if reference is not None else None
    dev = resolve_device(device, "--device")
    models, state = load_cascade(checkpoint, dev, stages_dir)
    cfg = state.get("config", {})
    diffusion = cfg.get("diffusion", {})
    last = models[-1]
    images = load_xrays(list(xrays), last.views, last.xray_size).to(dev)
    schedule = CosineSchedule(int(diffusion.get("timesteps", 1000)), device=dev)
    generator = torch.Generator(device=dev).manual_seed(seed)
    # what runs: DDIM takes at most one step per diffusion timestep
    steps = min(steps or int(diffusion.get("ddim_steps", 20)), schedule.num_steps)
    volumes = sample_cascade(models, schedule, images, steps=steps, generator=generator)
    volume = volumes[-1][0, 0].float().cpu().numpy()
    write_bytes_atomic(volume_bytes(volume, kind), out)
    result = SampleResult(volume, str(state["stage"]), steps, seed)
    if raw_reference is not None:
        result.reference_intensity = training_intensity(reference_intensity, state)
        target = reference_at(raw_reference, volume.shape[0], result.reference_intensity)
        pred, truth = volumes[-1].float(), target[None, None].to(dev)  # on the device: 3D SSIM of 256^3 is heavy
        result.psnr = float(volume_psnr(pred, truth)[0])
        result.ssim = float(volume_ssim(pred, truth)[0])
        result.reference = target.numpy()
    return result


def _check_outputs(args: argparse.Namespace) -> None:
    if args.preview is not None and not args.preview.lower().endswith(".png"):
        raise SampleError(f"--preview {args.preview}: unsupported extension (use .png)")
    if args.json is not None and args.reference is None:
        raise SampleError("--json writes the sample's quality against --reference: give --reference too")


def _write_reports(result: SampleResult, preview: str | None, json_path: str | None) -> list[str]:
    """Write the preview PNG and the metrics JSON that were asked for; one line to print per file."""
    from hnerv_fast.inference.volume_preview import PLANES, preview_png

    lines = []
    if preview is not None:
        rows = [("sample", result.volume)] + ([("reference", result.reference)] if result.reference is not None else [])
        write_bytes_atomic(preview_png(rows), preview)
        lines.append(f"wrote {preview}: rows {', '.join(label for label, _ in rows)}; columns {', '.join(PLANES)}")
    if json_path is not None:
        record = {"psnr": result.psnr, "ssim": result.ssim, "stage": result.stage, "size": int(result.volume.shape[0]),
                  "steps": result.steps, "seed": result.seed}
        write_bytes_atomic((json.dumps(record, indent=2, allow_nan=False) + "\n").encode(), json_path)
        lines.append(f"wrote {json_path}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = model_command_parser("hnerv_fast.sample", __doc__, "stage checkpoint, e.g. checkpoints/stage_256_final.pt")
    parser.add_argument("--xray", action="append", required=True,
                        help="X-ray file (.npy/.png), once per view in the config's data.views order; "
                             "or one .npy [V, X, X]")
    parser.add_argument("--out", required=True, help="output volume: .npy, .nii or .nii.gz")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the config's diffusion.ddim_steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages-dir", default=None,
                        help="folder with the earlier stages' {stage}_final.pt (default: the checkpoint's folder)")
    parser.add_argument("--reference", default=None,
                        help="ground-truth volume of the case (.npy/.nii/.nii.gz, a 3-D cube): print PSNR and 3D SSIM")
    parser.add_argument("--reference-intensity", choices=REFERENCE_INTENSITY, default="auto",
                        help="map the reference to [0, 1]: minmax (per volume, as CT-folder training data), none "
                             "(already in [0, 1], as the phantoms), auto (as the checkpoint's training data)")
    parser.add_argument("--json", default=None,
                        help="write {psnr, ssim, stage, size, steps, seed} here (needs --reference)")
    parser.add_argument("--preview", default=None,
                        help="PNG of the axial / coronal / sagittal middle slices (sample, and reference if given)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    try:
        _check_outputs(args)
        result = sample(args.checkpoint, args.xray, args.out, args.steps, args.seed, args.device, args.stages_dir,
                        args.reference, args.reference_intensity)
        written = _write_reports(result, args.preview, args.json)
    except UserError as exc:
        return report(exc)
    volume = result.volume
    print(f"wrote {args.out}: volume {list(volume.shape)} (D, H, W), range [{volume.min():.3f}, {volume.max():.3f}]")
    if result.psnr is not None:
        print(f"{result.stage} vs {args.reference} (intensity {result.reference_intensity}, at {volume.shape[0]}^3): "
              f"PSNR {result.psnr:.2f} dB, 3D SSIM {result.ssim:.4f}")
    for line in written:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
