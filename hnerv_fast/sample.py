"""Generate a CT volume from X-rays with a trained cascade.

    python -m hnerv_fast.sample --checkpoint checkpoints/stage_32_final.pt \\
        --xray case_frontal.png --xray case_lateral.npy --out volume.nii.gz

``--checkpoint`` is a stage checkpoint (``{stage}_best.pt`` / ``_epoch_N.pt`` / ``_final.pt``); the
stages before it in its cascade are loaded from ``{stage}_final.pt`` in the same folder (or
``--stages-dir``) and run first, coarse to fine, each conditioned on the previous one's sample.
X-rays: one file per view in the order of the training config's ``data.views`` (``.npy`` 2-D arrays
or ``.png`` grey images, resized to ``data.xray_size``), or a single ``.npy`` of shape ``[V, X, X]``.
They must be in the training data's units (mean attenuation along the ray, as the phantoms' X-rays).
Output: the last stage's volume ``[S, S, S]`` (float32, indexed D, H, W) as ``.npy`` or NIfTI
(``.nii`` / ``.nii.gz``, identity affine). Bad input: one ``error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from hnerv_fast.device import resolve_device
from hnerv_fast.errors import UserError, report


class SampleError(UserError, ValueError):
    """Bad input to the sampler (X-ray files, output name, cascade checkpoints)."""


OUT_EXTS = (".npy", ".nii", ".nii.gz")


def _out_kind(path: Path) -> str:
    name = path.name.lower()
    for ext in (".nii.gz", ".nii", ".npy"):
        if name.endswith(ext):
            return ext
    raise SampleError(f"--out {path}: unsupported extension (use one of {', '.join(OUT_EXTS)})")


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
            return torch.stack([resize_image(img, size) for img in images])[None]
    if len(paths) != len(views):
        raise SampleError(f"got {len(paths)} --xray file(s) but the model takes {len(views)} view(s) "
                          f"{list(views)} (one file per view, in that order)")
    return torch.stack([resize_image(torch.from_numpy(load_xray(p)), size) for p in paths])[None]


def save_volume(volume: np.ndarray, out: Path) -> Path:
    kind = _out_kind(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == ".npy":
        np.save(out, volume)
    else:
        import nibabel as nib

        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(out))
    return out


def sample(checkpoint: str | Path, xrays: list[str], out: str | Path, steps: int | None = None, seed: int = 0,
           device: str = "auto", stages_dir: str | Path | None = None) -> np.ndarray:
    from hnerv_fast.models.cascade_diffusion import sample_cascade
    from hnerv_fast.models.diffusion import CosineSchedule

    out = Path(out)
    _out_kind(out)  # fail before loading anything
    dev = resolve_device(device, "--device")
    models, state = load_cascade(checkpoint, dev, stages_dir)
    cfg = state.get("config", {})
    diffusion = cfg.get("diffusion", {})
    last = models[-1]
    images = load_xrays(list(xrays), last.views, last.xray_size).to(dev)
    schedule = CosineSchedule(int(diffusion.get("timesteps", 1000)), device=dev)
    generator = torch.Generator(device=dev).manual_seed(seed)
    volumes = sample_cascade(models, schedule, images, steps=steps or int(diffusion.get("ddim_steps", 20)),
                             generator=generator)
    volume = volumes[-1][0, 0].float().cpu().numpy()
    save_volume(volume, out)
    return volume


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hnerv_fast.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage checkpoint, e.g. checkpoints/stage_256_final.pt")
    parser.add_argument("--xray", action="append", required=True,
                        help="X-ray file (.npy/.png), once per view in the config's data.views order; "
                             "or one .npy [V, X, X]")
    parser.add_argument("--out", required=True, help="output volume: .npy, .nii or .nii.gz")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the config's diffusion.ddim_steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--stages-dir", default=None,
                        help="folder with the earlier stages' {stage}_final.pt (default: the checkpoint's folder)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    try:
        volume = sample(args.checkpoint, args.xray, args.out, args.steps, args.seed, args.device, args.stages_dir)
    except UserError as exc:
        return report(exc)
    print(f"wrote {args.out}: volume {list(volume.shape)} (D, H, W), range [{volume.min():.3f}, {volume.max():.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
