"""Every case of a cascade run (phantoms or a CT folder) as stacked tensors, loaded up front so bad
input fails before anything is written.

This module must not import ``hnerv_fast.train``, ``hnerv_fast.logging`` or ``hnerv_fast.models``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hnerv_fast.config import CascadeConfig, ConfigError

# Data this small (bytes) stays on the accelerator; larger sets stay in pinned host memory and each
# batch is copied over (non_blocking).
DEVICE_DATA_LIMIT = 2 << 30


@dataclass
class CascadeData:
    """All cases of a run. ``volumes[S]`` is ``[N, 1, S, S, S]``; rows index the cases."""

    names: list[str]
    xrays: torch.Tensor  # [N, V, X, X]
    volumes: dict[int, torch.Tensor]
    train_rows: torch.Tensor  # long, on the storage device
    val_rows: torch.Tensor
    views: tuple[str, ...]
    device: torch.device  # where the tensors live (the training device, or pinned host memory)

    def to_device(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        return tensor if tensor.device == device else tensor.to(device, non_blocking=True)


def _stack_items(items: list[dict], sizes: list[int]) -> tuple[list[str], torch.Tensor, dict[int, torch.Tensor]]:
    names = [it["name"] for it in items]
    xrays = torch.stack([it["xrays"] for it in items]).float()
    volumes = {s: torch.stack([it["volumes"][s] for it in items]).float() for s in sizes}
    return names, xrays, volumes


def load_cascade_data(cfg: CascadeConfig, device: torch.device,
                      *, project: Callable[[torch.Tensor, str, int], torch.Tensor]) -> CascadeData:
    """Phantoms (the last ``round(val_fraction * num_cases)`` cases, at least one, are validation)
    or a CT folder (``CTFolderDataset`` split by case; ``project`` computes the DRRs of cases without
    X-ray files: passed in, the DRR lives in models/). Raises ``CTFolderError`` on bad folders."""
    d = cfg.data
    sizes = sorted({cfg.stages[name].size for name in cfg.stages})
    views = tuple(d.views)
    if d.source == "phantoms":
        from hnerv_fast.data.phantoms import phantom_dataset

        ds = phantom_dataset(d.num_cases, sizes=sizes, xray_size=d.xray_size, views=views, seed=d.seed,
                             cache=False, supersample=d.supersample)
        items = [ds[i] for i in range(len(ds))]
        n_val = min(max(1, round(d.val_fraction * d.num_cases)), d.num_cases - 1)
        n_train = d.num_cases - n_val
    else:
        from hnerv_fast.data.ct_folder import CTFolderDataset

        common = dict(sizes=sizes, xray_size=d.xray_size, views=views, val_fraction=d.val_fraction,
                      seed=d.seed, project=project, cache=False)
        train = CTFolderDataset(d.root, split="train", **common)
        val = CTFolderDataset(d.root, split="val", **common)
        items = [train[i] for i in range(len(train))] + [val[i] for i in range(len(val))]
        n_train, n_val = len(train), len(val)
    names, xrays, volumes = _stack_items(items, sizes)
    expected = (len(views), d.xray_size, d.xray_size)
    if tuple(xrays.shape[1:]) != expected:
        raise ConfigError(f"data.xray_size / data.views: X-rays are {list(xrays.shape[1:])}, expected {list(expected)}")
    nbytes = xrays.numel() * 4 + sum(v.numel() * 4 for v in volumes.values())
    storage = device if device.type == "cpu" or nbytes <= DEVICE_DATA_LIMIT else torch.device("cpu")
    pin = device.type == "cuda" and storage.type == "cpu"

    def place(t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory() if pin else t.to(storage)

    rows = torch.arange(n_train + n_val, device=storage)
    return CascadeData(names, place(xrays), {s: place(v) for s, v in volumes.items()}, rows[:n_train],
                       rows[n_train:], views, storage)
