"""The one base of every error that means bad input (config, data, checkpoint, query) rather than a bug.

The trainer and the command-line tools catch `UserError` alone: one clear line on stderr, exit code 2.
Each subclass also keeps the built-in base its callers may catch (ValueError, RuntimeError).
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator


class UserError(Exception):
    """Bad input; the message names the offending key, path or value."""


class OutputError(UserError, OSError):
    """An output path that cannot be written: a file where a folder should be, no permission, a full disk."""


@contextlib.contextmanager
def writing(path) -> Iterator[None]:
    """An OSError in the block becomes an OutputError naming `path` and the OS's reason (one line, not a
    traceback), e.g. "cannot write out/x/latest.pt: Not a directory: 'out/x'"."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.filename is not None:
            reason += f": {str(exc.filename)!r}"
        raise OutputError(f"cannot write {path}: {reason}") from exc


def report(exc: UserError, where: str = "") -> int:
    """Print the error's first line as ``error<where>: ...`` on stderr; the exit code of bad input (2)."""
    lines = str(exc).strip().splitlines()
    print(f"error{where}: {lines[0] if lines else repr(exc)}", file=sys.stderr)
    return 2
