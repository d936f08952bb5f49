"""Crash-safe file writes shared by checkpoints and caches (a leaf module: imports only hnerv_fast.errors).

A path that cannot be written raises OutputError (a UserError): the CLIs report it as one line."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from hnerv_fast.errors import OutputError, writing


# mkstemp creates 0600 files; the written file gets the mode a plain open() would give (0666 less the umask).
# Read once, at import: os.umask can only be read by setting it, which is not thread-safe later on.
_UMASK = os.umask(0)
os.umask(_UMASK)


def ensure_parent(path: str | Path) -> Path:
    """Create `path`'s folder (OutputError when a file or a permission is in the way). Code with costly work
    before its write calls this first, so a bad output path fails before that work."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


def check_creatable(folder: str | Path) -> None:
    """OutputError now when `folder` could not be created or written later (a file in the way, no
    permission). Creates nothing: a run that then fails on other bad input leaves no trace."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"cannot write {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {folder}: no permission to write in {existing}")


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a temp file in the same folder, fsync, then rename over `path`.

    A crash mid-write leaves the previous file (or none), never a truncated one; the temp file is
    removed on failure."""
    path = ensure_parent(path)
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)
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
