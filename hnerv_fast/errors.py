"""The one base of every error that means bad input (config, data, checkpoint, query) rather than a bug.

The trainer and the command-line tools catch `UserError` alone: one clear line on stderr, exit code 2.
Each subclass also keeps the built-in base its callers may catch (ValueError, RuntimeError).
"""
from __future__ import annotations

import sys


class UserError(Exception):
    """Bad input; the message names the offending key, path or value."""


def report(exc: UserError, where: str = "") -> int:
    """Print the error's first line as ``error<where>: ...`` on stderr; the exit code of bad input (2)."""
    lines = str(exc).strip().splitlines()
    print(f"error{where}: {lines[0] if lines else repr(exc)}", file=sys.stderr)
    return 2
