"""Crash-safe file writes shared by checkpoints and caches (a leaf module: imports nothing of ours)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a temp file in the same folder, fsync, then rename over `path`.

    A crash mid-write leaves the previous file (or none), never a truncated one; the temp file is
    removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save `obj` to `path` atomically."""
    return write_atomic(path, lambda handle: torch.save(obj, handle))


def write_bytes_atomic(data: bytes, path: str | Path) -> Path:
    """Write `data` to `path` atomically."""
    return write_atomic(path, lambda handle: handle.write(data))
