"""Synthetic CT phantoms (random 3D Shepp–Logan-like heads) with analytic X-rays.

A phantom is a list of :class:`Ellipsoid` s defined in continuous normalised coordinates
``(d, h, w) in [-1, 1]^3`` (the same axis names and order as a ``[.., D, H, W]`` volume; see
:mod:`hnerv_fast.models.drr`). Attenuation is the *sum* of the values of the ellipsoids containing a
point. The generator builds the phantom so that this sum always lies in ``[0, 1]``:

* skull: an outer ellipsoid with value ``skull`` in [0.8, 1.0];
* brain: a nested ellipsoid (same centre and orientation, smaller on every axis) with value
  ``brain - skull`` so the interior is ``brain`` in [0.15, 0.3];
* 4–8 inner features (random centre / axes / 3D orientation / contrast), each strictly inside the
  brain and pairwise non-overlapping (checked with conservative bounding spheres), with values in
  ``[-brain, 1 - brain]``.

So no clamping is needed and line integrals are exactly the sum of ``value * chord length`` over
ellipsoids, which gives analytic X-rays (and the oracle for the DRR tests).

Sampling: a volume of size S samples each voxel *centre* ``-1 + (2 i + 1) / S`` (or, with
``supersample=k``, averages a ``k^3`` sub-grid per voxel: partial-volume voxels; the dataset default
is k = 2) — the phantom is a continuous object, so the same case at 16^3 and 32^3 is the same head. An X-ray of size X is the
normalised line integral (the mean attenuation along the ray, i.e. the integral over a unit-length
field of view — the convention of :func:`hnerv_fast.models.drr.drr` with ``voxel_size=None``) along
rays through the pixel centres. When ``X == S`` the DRR of the voxelised volume differs from the
analytic X-ray only by voxelisation: with point samples at most ``|value| / S`` per boundary
crossing of the ray.

Projection lives here (analytic) so that ``data`` does not import ``models``; callers that want the
X-rays to be exactly the model-side DRR of the voxel volume pass ``project=`` (e.g.
``hnerv_fast.models.drr.drr``) to :func:`phantom_dataset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from hnerv_fast.names import VIEWS

__all__ = [
    "Ellipsoid",
    "random_head_phantom",
    "phantom_ellipsoids",
    "voxelize",
    "analytic_projection",
    "phantom_volume",
    "phantom_xrays",
    "PhantomCTDataset",
    "phantom_dataset",
]



@dataclass(frozen=True)
class Ellipsoid:
    """``value`` added inside ``{x : |diag(1/axes) R^T (x - center)| <= 1}``.

    ``center`` and ``axes`` are ``(d, h, w)``; ``rotation`` is a 3x3 matrix whose columns are the
    ellipsoid's principal directions in ``(d, h, w)`` coordinates (identity = axis-aligned)."""

    value: float
    center: tuple
    axes: tuple
    rotation: tuple = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def _arrays(self):
        c = np.asarray(self.center, dtype=np.float64)
        a = np.asarray(self.axes, dtype=np.float64)
        R = np.asarray(self.rotation, dtype=np.float64)
        # local coordinates u = T (x - c) with T = diag(1/a) R^T
        return c, (R / a[None, :]).T


def _rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    """Random rotation: Euler angles (about d, h, w) uniform in [-max_angle, max_angle]."""
    ax, ay, az = rng.uniform(-max_angle, max_angle, size=3)
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _as_tuple(m: np.ndarray) -> tuple:
    return tuple(tuple(float(x) for x in row) for row in m)


def random_head_phantom(rng: np.random.Generator, min_features: int = 4,
                        max_features: int = 8) -> list[Ellipsoid]:
    """Draw one Shepp–Logan-like head (skull, brain, non-overlapping inner features) from ``rng``.
    Attenuation is guaranteed to lie in ``[0, 1]`` everywhere (see module doc)."""
    skull_val = rng.uniform(0.8, 1.0)
    brain_val = rng.uniform(0.15, 0.3)
    # Shepp–Logan proportions (AP depth 0.9, height 0.92, width 0.69), jittered, kept in the FOV.
    skull_axes = np.array([0.90, 0.92, 0.69]) * rng.uniform(0.92, 1.03, size=3)
    skull_axes = np.minimum(skull_axes, 0.95)
    skull_c = rng.uniform(-0.02, 0.02, size=3)
    skull_R = _rotation(rng, np.deg2rad(6.0))
    thickness = rng.uniform(0.03, 0.07)
    brain_axes = skull_axes - thickness
    out = [Ellipsoid(skull_val, tuple(skull_c), tuple(skull_axes), _as_tuple(skull_R)),
           Ellipsoid(brain_val - skull_val, tuple(skull_c), tuple(brain_axes), _as_tuple(skull_R))]

    brain_T = (skull_R / brain_axes[None, :]).T
    brain_min_axis = float(brain_axes.min())
    n_feat = int(rng.integers(min_features, max_features + 1))
    placed: list[tuple[np.ndarray, float]] = []
    tries = 0
    while len(placed) < n_feat and tries < 500:
        tries += 1
        axes = rng.uniform(0.04, 0.25, size=3)
        r = float(axes.max())
        c = skull_c + rng.uniform(-0.7, 0.7, size=3) * brain_axes
        # bounding sphere (c, r) must be inside the brain ...
        if np.linalg.norm(brain_T @ (c - skull_c)) + r / brain_min_axis > 0.98:
            continue
        # ... and disjoint from every placed feature
        if any(np.linalg.norm(c - c2) < r + r2 + 0.01 for c2, r2 in placed):
            continue
        placed.append((c, r))
        # contrast: dark (ventricle-like) or bright (lesion-like) relative to the brain
        if rng.uniform() < 0.4:
            delta = -rng.uniform(0.5, 1.0) * brain_val
        else:
            delta = rng.uniform(0.1, 0.7)
        out.append(Ellipsoid(float(delta), tuple(c), tuple(axes),
                             _as_tuple(_rotation(rng, np.pi))))
    return out


def phantom_ellipsoids(seed: int) -> list[Ellipsoid]:
    """The (deterministic) ellipsoids of phantom case ``seed``."""
    return random_head_phantom(np.random.default_rng(np.random.SeedSequence(int(seed))))


def _centres(n: int) -> np.ndarray:
    return -1.0 + (2.0 * np.arange(n) + 1.0) / n


def _point_sample(ellipsoids: Sequence[Ellipsoid], grids, out: np.ndarray, weight: float) -> None:
    """``out[i, j, k] += weight * attenuation(gd[i], gh[j], gw[k])``."""
    max_points = 1 << 21                       # ~2M points per block keeps memory small at 256^3
    for e in ellipsoids:
        c, T = e._arrays()
        # axis-aligned bounding box of the ellipsoid -> index range per axis
        R = np.asarray(e.rotation, dtype=np.float64)
        half = np.sqrt(((R * np.asarray(e.axes, dtype=np.float64)[None, :]) ** 2).sum(1))
        lo = [int(np.searchsorted(g, c[a] - half[a], side="left")) for a, g in enumerate(grids)]
        hi = [int(np.searchsorted(g, c[a] + half[a], side="right")) for a, g in enumerate(grids)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        gd, gh, gw = (g[l:h] for g, l, h in zip(grids, lo, hi))
        chunk = max(1, max_points // (len(gh) * len(gw)))
        for i0 in range(0, len(gd), chunk):
            i1 = min(len(gd), i0 + chunk)
            pts = np.stack(np.meshgrid(gd[i0:i1], gh, gw, indexing="ij"), axis=-1)
            u = (pts - c) @ T.T
            out[lo[0] + i0:lo[0] + i1, lo[1]:hi[1], lo[2]:hi[2]] += (
                (weight * e.value) * ((u * u).sum(-1) <= 1.0))


def voxelize(ellipsoids: Sequence[Ellipsoid], size: int, supersample: int = 1) -> np.ndarray:
    """Voxelise the phantom on a ``size^3`` grid -> float32 ``[S, S, S]`` indexed ``(d, h, w)``.

    ``supersample=1`` samples the voxel centres (exact "same object at every size": the 16^3
    samples are every third sample of the 48^3 grid). ``supersample=k`` averages a regular
    ``k^3`` sub-grid per voxel (partial-volume voxels, closer to a CT reconstruction and with less
    aliasing in the DRRs); cost grows as ``k^3``, memory does not."""
    S, k = int(size), int(supersample)
    if S < 1 or k < 1:
        raise ValueError(f"size and supersample must be >= 1, got {size}, {supersample}")
    g = _centres(S)
    offsets = ((2.0 * np.arange(k) + 1.0) / k - 1.0) / S      # sub-sample offsets in a voxel
    vol = np.zeros((S, S, S), dtype=np.float64)
    w = 1.0 / k ** 3
    for od in offsets:
        for oh in offsets:
            for ow in offsets:
                _point_sample(ellipsoids, (g + od, g + oh, g + ow), vol, w)
    return vol.astype(np.float32)


def analytic_projection(ellipsoids: Sequence[Ellipsoid], view: str, size) -> np.ndarray:
    """Exact normalised line integrals (mean attenuation along the ray through the ``[-1, 1]``
    field of view) at the pixel centres of a ``size`` image (int or ``(rows, cols)``) -> float32.

    frontal: rays along d, image ``(h, w)``; lateral: rays along w, image ``(h, d)``."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    rows, cols = (size, size) if isinstance(size, int) else size
    hr, cc = np.meshgrid(_centres(rows), _centres(cols), indexing="ij")
    zeros = np.zeros_like(hr)
    if view == "frontal":
        p0 = np.stack([zeros, hr, cc], axis=-1)          # (d=0, h, w), direction +d
        e_dir = np.array([1.0, 0.0, 0.0])
    else:
        p0 = np.stack([cc, hr, zeros], axis=-1)          # (d, h, w=0), direction +w
        e_dir = np.array([0.0, 0.0, 1.0])
    out = np.zeros((rows, cols), dtype=np.float64)
    for e in ellipsoids:
        c, T = e._arrays()
        q = (p0 - c) @ T.T
        r = T @ e_dir
        rr = float(r @ r)
        qr = q @ r
        disc = qr * qr - rr * ((q * q).sum(-1) - 1.0)
        chord = 2.0 * np.sqrt(np.clip(disc, 0.0, None)) / rr
        out += e.value * chord
    return (out / 2.0).astype(np.float32)          # FOV length 2 -> unit-length normalisation


def phantom_volume(size: int, seed: int, supersample: int = 1) -> torch.Tensor:
    """Phantom case ``seed`` on a ``size^3`` grid: float32 ``[1, S, S, S]`` in ``[0, 1]``
    (see :func:`voxelize` for ``supersample``)."""
    return torch.from_numpy(voxelize(phantom_ellipsoids(seed), size, supersample)).unsqueeze(0)


def phantom_xrays(seed: int, views: Sequence[str] = VIEWS, size: int = 32) -> torch.Tensor:
    """Analytic X-rays of phantom case ``seed``: float32 ``[V, size, size]``."""
    ells = phantom_ellipsoids(seed)
    return torch.stack([torch.from_numpy(analytic_projection(ells, v, size)) for v in views])


Projector = Callable[[torch.Tensor, str, int], torch.Tensor]


class PhantomCTDataset(Dataset):
    """``num_cases`` synthetic heads; item ``i`` is a dict::

        {"name": str, "xrays": float32 [V, X, X], "volumes": {S: float32 [1, S, S, S] for S in sizes}}

    (``default_collate`` batches it to ``xrays [B, V, X, X]`` and ``volumes[S] [B, 1, S, S, S]``.)
    Case ``i`` uses seed ``SeedSequence([seed, i])`` and is independent of ``num_cases``.
    X-rays are analytic (``project=None``) or ``project(volume [1, 1, S, S, S], view, X) ->
    [1, 1, X, X]`` applied to the largest stage volume. Volumes are voxelised with
    ``supersample^3`` sub-samples per voxel (default 2: partial-volume voxels; 1 = point samples).
    Items are generated on first access and cached when ``cache=True``.
    """

    def __init__(self, num_cases: int, sizes: Sequence[int] = (16, 32), xray_size: int = 32,
                 views: Sequence[str] = VIEWS, seed: int = 0, project: Optional[Projector] = None,
                 cache: bool = True, supersample: int = 2):
        if num_cases < 1:
            raise ValueError(f"num_cases must be >= 1, got {num_cases}")
        if not sizes or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes must be positive ints, got {sizes}")
        bad = [v for v in views if v not in VIEWS]
        if bad or not views:
            raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {tuple(views)}")
        self.num_cases = int(num_cases)
        self.sizes = tuple(int(s) for s in sizes)
        self.xray_size = int(xray_size)
        self.views = tuple(views)
        self.seed = int(seed)
        self.project = project
        self.supersample = int(supersample)
        self._cache: Optional[dict] = {} if cache else None

    def __len__(self) -> int:
        return self.num_cases

    def case_seed(self, i: int) -> int:
        return int(np.random.SeedSequence([self.seed, int(i)]).generate_state(1)[0])

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_cases:
            raise IndexError(i)
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        ells = phantom_ellipsoids(self.case_seed(i))
        volumes = {S: torch.from_numpy(voxelize(ells, S, self.supersample)).unsqueeze(0)
                   for S in self.sizes}
        if self.project is None:
            xr = [torch.from_numpy(analytic_projection(ells, v, self.xray_size))
                  for v in self.views]
        else:
            big = volumes[max(self.sizes)].unsqueeze(0)
            xr = [self.project(big, v, self.xray_size).reshape(self.xray_size, self.xray_size)
                  for v in self.views]
        item = {"name": f"phantom_s{self.seed}_{i:05d}", "xrays": torch.stack(xr).float(),
                "volumes": volumes}
        if self._cache is not None:
            self._cache[i] = item
        return item


def phantom_dataset(num_cases: int, sizes: Sequence[int] = (16, 32), xray_size: int = 32,
                    views: Sequence[str] = VIEWS, seed: int = 0,
                    project: Optional[Projector] = None, cache: bool = True,
                    supersample: int = 2) -> PhantomCTDataset:
    """Build a :class:`PhantomCTDataset` (use different ``seed`` s for train and val)."""
    return PhantomCTDataset(num_cases, sizes, xray_size, views, seed, project, cache,
                            supersample)
