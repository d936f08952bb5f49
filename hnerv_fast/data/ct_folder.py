"""Folder of CT volumes (NumPy / NIfTI) with matching X-rays, for the X-ray -> CT cascade.

Layout::

    root/
      case_a.npy               volume, 3D array indexed (D, H, W)   (also .nii / .nii.gz)
      case_a_frontal.png       optional X-ray per view: <case>_<view>.png or .npy
      case_a_lateral.npy
      case_b.nii.gz            no X-ray files -> DRRs computed on the fly with ``project``

* Volumes: ``.npy`` (3D, or 4D with one singleton axis) or NIfTI via nibabel (the data array is
  taken in its stored index order as ``(D, H, W)``: no reorientation). Intensities are mapped to
  ``[0, 1]`` (``intensity="minmax"``, default, per volume), clipped and scaled from a fixed window
  (``intensity=(lo, hi)``, e.g. HU ``(-1000, 2000)``), or used as is (``"none"``).
  Each volume is resized (trilinear, ``align_corners=False``) to every stage size ``S^3``.
* X-rays: ``.npy`` (2D float, used as is) or ``.png`` (8-bit / 16-bit grey, RGB converted to grey,
  scaled to ``[0, 1]``), resized (bilinear) to ``xray_size``. Their aspect ratio must match the
  volume's projection plane (frontal ``(H, W)``, lateral ``(H, D)``; see
  :mod:`hnerv_fast.models.drr`). The physics loss compares them with DRRs in the model's units
  (mean attenuation along the ray), so supplied X-rays must be in those units; omit them to get
  consistent DRRs computed on the fly.
* Without X-ray files a case needs ``project(volume [1, 1, S, S, S], view, xray_size) ->
  [1, 1, X, X]`` (pass ``hnerv_fast.models.drr.drr``; ``data`` does not import ``models``), applied
  to the largest stage volume.
* Train/val split is by case: sorted names, permuted with ``seed``, ``round(val_fraction * n)``
  cases (at least 1 and at most n-1 when ``val_fraction > 0`` and n >= 2) go to val.

Errors are ``CTFolderError`` (a ``ValueError``) naming the folder / file / case.
Items have the same layout as :class:`hnerv_fast.data.phantoms.PhantomCTDataset`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from hnerv_fast.errors import UserError
from hnerv_fast.names import VIEWS

__all__ = [
    "CTFolderError",
    "CaseFiles",
    "discover_cases",
    "load_volume",
    "load_xray",
    "normalize_intensity",
    "resize_volume",
    "resize_image",
    "split_cases",
    "CTFolderDataset",
]

VOLUME_EXTS = (".nii.gz", ".nii", ".npy")
XRAY_EXTS = (".npy", ".png")

Projector = Callable[[torch.Tensor, str, int], torch.Tensor]


class CTFolderError(UserError, ValueError):
    """Bad folder content (empty folder, unreadable file, shape mismatch, missing X-ray...)."""


@dataclass
class CaseFiles:
    name: str
    volume: Path
    xrays: dict = field(default_factory=dict)   # view -> Path


def _split_ext(name: str) -> tuple[str, str]:
    for ext in (".nii.gz", ".nii", ".npy", ".png"):
        if name.lower().endswith(ext):
            return name[: -len(ext)], ext
    return name, ""


def discover_cases(root: Union[str, os.PathLike], views: Sequence[str] = VIEWS) -> list[CaseFiles]:
    """Pair volume files with their ``<case>_<view>.{png,npy}`` X-rays (sorted by case name).

    Files named ``<stem>_<view>`` for any known view are X-rays; other ``.npy/.nii/.nii.gz`` are
    volumes; anything else is ignored. Raises on: missing/empty folder, two volumes with one case
    name, two files for one X-ray, an X-ray without a volume."""
    root = Path(root)
    if not root.is_dir():
        raise CTFolderError(f"CT folder {str(root)!r} does not exist or is not a directory")
    volumes: dict[str, Path] = {}
    xrays: dict[str, dict[str, Path]] = {}
    for p in sorted(root.iterdir()):
        if not p.is_file():
            continue
        stem, ext = _split_ext(p.name)
        if not ext:
            continue
        view = next((v for v in VIEWS if stem.endswith("_" + v)), None)
        if view is not None and ext in XRAY_EXTS:
            case = stem[: -len(view) - 1]
            if view not in views:
                continue
            prev = xrays.setdefault(case, {}).get(view)
            if prev is not None:
                raise CTFolderError(f"case {case!r}: two {view} X-rays {prev.name!r} and "
                                    f"{p.name!r} in {str(root)!r}; keep one")
            xrays[case][view] = p
        elif ext in VOLUME_EXTS:
            if stem in volumes:
                raise CTFolderError(f"case {stem!r}: two volumes {volumes[stem].name!r} and "
                                    f"{p.name!r} in {str(root)!r}; keep one")
            volumes[stem] = p
    if not volumes:
        raise CTFolderError(f"CT folder {str(root)!r} holds no volumes "
                            f"(expected *.npy, *.nii or *.nii.gz)")
    orphans = sorted(set(xrays) - set(volumes))
    if orphans:
        files = [p.name for c in orphans for p in xrays[c].values()]
        raise CTFolderError(f"X-ray files without a matching volume in {str(root)!r}: {files}")
    return [CaseFiles(name, volumes[name], dict(xrays.get(name, {}))) for name in sorted(volumes)]


def load_volume(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read a ``.npy`` / ``.nii`` / ``.nii.gz`` volume -> float32 ``[D, H, W]`` (finite)."""
    path = Path(path)
    try:
        if path.name.lower().endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        else:
            import nibabel as nib
            arr = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise CTFolderError(f"cannot read volume {str(path)!r}: {exc}") from exc
    arr = np.asarray(arr)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise CTFolderError(f"volume {str(path)!r} must be a 3D array (D, H, W), "
                            f"got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.number):
        raise CTFolderError(f"volume {str(path)!r} has non-numeric dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise CTFolderError(f"volume {str(path)!r} contains NaN or Inf")
    return arr


def load_xray(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read a ``.npy`` (2D, used as is) or ``.png`` (grey, scaled to [0, 1]) X-ray -> float32 2D."""
    path = Path(path)
    try:
        if path.name.lower().endswith(".npy"):
            arr = np.asarray(np.load(path, allow_pickle=False))
        else:
            from PIL import Image
            with Image.open(path) as im:
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im, dtype=np.float64) / 65535.0
                elif im.mode == "F":
                    arr = np.asarray(im, dtype=np.float64)
                else:
                    arr = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except Exception as exc:  # noqa: BLE001
        raise CTFolderError(f"cannot read X-ray {str(path)!r}: {exc}") from exc
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise CTFolderError(f"X-ray {str(path)!r} must be a 2D image, got shape {tuple(arr.shape)}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise CTFolderError(f"X-ray {str(path)!r} contains NaN or Inf")
    return arr


def normalize_intensity(vol: np.ndarray, intensity="minmax") -> np.ndarray:
    """``"minmax"`` -> [0, 1] per volume (constant volume -> zeros); ``(lo, hi)`` -> clip to the
    window and scale to [0, 1]; ``"none"`` -> unchanged."""
    if intensity == "none" or intensity is None:
        return vol
    if intensity == "minmax":
        lo, hi = float(vol.min()), float(vol.max())
        if hi <= lo:
            return np.zeros_like(vol)
        return (vol - lo) / (hi - lo)
    try:
        lo, hi = (float(x) for x in intensity)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"intensity must be 'minmax', 'none' or (lo, hi), got {intensity!r}") from exc
    if hi <= lo:
        raise ValueError(f"intensity window must have lo < hi, got {intensity!r}")
    return (np.clip(vol, lo, hi) - lo) / (hi - lo)


def resize_volume(vol: torch.Tensor, size: int) -> torch.Tensor:
    """Trilinear resize ``[C, D, H, W]`` -> ``[C, S, S, S]`` (``align_corners=False``)."""
    if tuple(vol.shape[-3:]) == (size, size, size):
        return vol
    return F.interpolate(vol[None], size=(size, size, size), mode="trilinear",
                         align_corners=False)[0]


def resize_image(img: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize ``[rows, cols]`` -> ``[size, size]`` (anti-aliased when shrinking)."""
    if tuple(img.shape) == (size, size):
        return img
    shrink = img.shape[0] > size or img.shape[1] > size
    return F.interpolate(img[None, None], size=(size, size), mode="bilinear",
                         align_corners=False, antialias=shrink)[0, 0]


def split_cases(names: Sequence[str], val_fraction: float = 0.2,
                seed: int = 0) -> tuple[list[str], list[str]]:
    """Seeded split by case -> ``(train_names, val_names)`` (each sorted)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    names = sorted(names)
    n = len(names)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0 if n < 2 else n_val
    perm = np.random.default_rng(seed).permutation(n)
    val = sorted(names[i] for i in perm[:n_val])
    train = sorted(names[i] for i in perm[n_val:])
    return train, val


def _projection_plane(shape, view) -> tuple[int, int]:
    D, H, W = shape
    return (H, W) if view == "frontal" else (H, D)


class CTFolderDataset(Dataset):
    """Cases of a CT folder (one split); item ``i`` is a dict::

        {"name": str, "xrays": float32 [V, X, X], "volumes": {S: float32 [1, S, S, S] for S in sizes}}

    ``split`` is ``"train"``, ``"val"`` or ``"all"``. File names are checked at construction; files
    are read on first access (and cached with ``cache=True``). See the module doc for formats.
    """

    def __init__(self, root: Union[str, os.PathLike], sizes: Sequence[int] = (16, 32),
                 xray_size: int = 32, views: Sequence[str] = VIEWS, split: str = "train",
                 val_fraction: float = 0.2, seed: int = 0, project: Optional[Projector] = None,
                 intensity="minmax", cache: bool = True):
        bad = [v for v in views if v not in VIEWS]
        if bad or not views:
            raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {tuple(views)}")
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if not sizes or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes must be positive ints, got {sizes}")
        self.root = Path(root)
        self.sizes = tuple(int(s) for s in sizes)
        self.xray_size = int(xray_size)
        self.views = tuple(views)
        self.project = project
        self.intensity = intensity
        cases = discover_cases(self.root, self.views)
        for c in cases:
            present = [v for v in self.views if v in c.xrays]
            if present and len(present) != len(self.views):
                missing = [f"{c.name}_{v}.png|npy" for v in self.views if v not in c.xrays]
                raise CTFolderError(f"case {c.name!r} in {str(self.root)!r} has X-rays for "
                                    f"{present} but not {missing}")
            if not present and project is None:
                raise CTFolderError(
                    f"case {c.name!r} in {str(self.root)!r} has no X-ray files "
                    f"({c.name}_<view>.png|npy for views {self.views}) and no projector was "
                    f"given to compute DRRs (pass project=hnerv_fast.models.drr.drr)")
        train, val = split_cases([c.name for c in cases], val_fraction, seed)
        keep = {"train": train, "val": val, "all": [c.name for c in cases]}[split]
        if not keep:
            raise CTFolderError(f"split {split!r} of {str(self.root)!r} is empty ({len(cases)} "
                                f"case(s), val_fraction={val_fraction}); add cases or use "
                                f"split='all'")
        by_name = {c.name: c for c in cases}
        self.cases = [by_name[n] for n in keep]
        self._cache: Optional[dict] = {} if cache else None

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cases]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self.cases):
            raise IndexError(i)
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        case = self.cases[i]
        raw = load_volume(case.volume)
        vol = torch.from_numpy(np.ascontiguousarray(normalize_intensity(raw, self.intensity)))
        vol = vol.float().unsqueeze(0)
        volumes = {S: resize_volume(vol, S).contiguous() for S in self.sizes}
        xr = []
        for view in self.views:
            path = case.xrays.get(view)
            if path is None:
                big = volumes[max(self.sizes)].unsqueeze(0)
                img = self.project(big, view, self.xray_size)
                xr.append(img.reshape(self.xray_size, self.xray_size).float())
                continue
            img = load_xray(path)
            rows, cols = _projection_plane(raw.shape, view)
            if abs(img.shape[0] * cols - img.shape[1] * rows) > 0.02 * rows * img.shape[1]:
                raise CTFolderError(
                    f"X-ray {str(path)!r} has shape {tuple(img.shape)} but the {view} projection "
                    f"of volume {case.volume.name!r} {tuple(raw.shape)} (D, H, W) is "
                    f"{(rows, cols)} (rows, cols): aspect ratios differ")
            xr.append(resize_image(torch.from_numpy(img), self.xray_size))
        item = {"name": case.name, "xrays": torch.stack(xr).float(), "volumes": volumes}
        if self._cache is not None:
            self._cache[i] = item
        return item
