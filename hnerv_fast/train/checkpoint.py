"""The trainer's checkpoint files: atomic writes, weights_only reads and the RNG state they carry.

Writes go to a temp file in the same folder, fsynced, then renamed: a crash mid-write leaves at most a
stray `*.tmp` (removed on the next save), never a truncated `.pt`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from hnerv_fast.atomic import save_atomic  # noqa: F401  (re-exported: the checkpoint writer)
from hnerv_fast.checkpoint_io import CheckpointError, load  # noqa: F401  (re-exported: the checkpoint reader)
from hnerv_fast.errors import UserError
from hnerv_fast.train import distributed


EVENT_FILES = "events.out.tfevents.*"  # a TensorBoard run folder's files (what output.overwrite=true replaces)


class RunExistsError(UserError, FileExistsError):
    """A fresh run (no --resume) whose checkpoint folder already holds that trainer's checkpoints: training
    would overwrite them (``output.overwrite=true`` allows it)."""


def refuse_overwrite(folder: Path, find: Callable[[], list[Path]], elsewhere: str) -> None:
    """RunExistsError when ``find()`` (the checkpoints in `folder` this run would rewrite, newest first) finds
    any; `elsewhere` names the config keys that pick another folder. Rank 0 (the one that writes them) looks."""
    def check() -> None:
        found = find()
        if found:
            epoch = saved_epoch(found[0])
            what = found[0].name if epoch is None else f"{found[0].name}, epoch {epoch}"
            what += f", and {len(found) - 1} more" if len(found) > 1 else ""
            raise RunExistsError(f"{folder} already holds checkpoints ({what}): continue it with --resume, or "
                                 f"pick another output folder ({elsewhere}) / set output.overwrite=true")

    distributed.check_on_main(check)


def nothing_left(state: dict[str, Any], train: Any, path: Path, epochs_key: str = "train.epochs") -> str | None:
    """What to tell the user when a run resumed from `state` (read from `path`) has no epoch left in this
    invocation (`train`: its EngineConfig, `epochs_key`: the config key of its epochs); None when it has."""
    epoch = state.get("epoch")
    if not isinstance(epoch, int):  # a broken checkpoint: Engine.resume names what is missing
        return None
    if train.stop_after is not None and train.stop_after < train.epochs and epoch >= train.stop_after:
        return (f"nothing to train: {path} is at epoch {epoch} and train.stop_after={train.stop_after}; "
                f"raise or drop train.stop_after to go on")
    if epoch >= train.epochs:
        return (f"nothing to train: {path} is at epoch {epoch} of {epochs_key}={train.epochs}; to train longer, "
                f"raise {epochs_key} and pass --resume {path}")
    return None


def saved_epoch(path: Path) -> int | None:
    """The epoch a checkpoint was saved at (memory-mapped: the weights are not read); None if unreadable."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # only decorates the message: a broken file still counts as a checkpoint
        return None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    # RNG states are CPU byte tensors; a checkpoint loaded with map_location=cuda holds CUDA copies
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def check_same_run(saved: dict[str, Any], current: dict[str, Any], sections: dict[str, tuple[str, ...]],
                   source: Path) -> None:
    """CheckpointError when the checkpoint's config (`saved`) differs from this run's (`current`) in a key of
    `sections` ({section: keys that may differ}): a resumed run must train the same model on the same data.
    The keys left out (e.g. a data path) may change; so may everything outside `sections` (epochs, lr...)."""
    changed = []
    for section, free in sections.items():
        before, now = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(before) | set(now)):
            if key not in free and before.get(key) != now.get(key):
                changed.append(f"{section}.{key} was {before.get(key)!r}, now {now.get(key)!r}")
    if changed:
        more = f" (and {len(changed) - 2} more)" if len(changed) > 2 else ""
        raise CheckpointError(f"cannot resume from {source}: {'; '.join(changed[:2])}{more}; resume with the "
                              f"run's settings, or start a new run")
