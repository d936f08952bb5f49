"""The one base of every error that means bad input (config, data, checkpoint, query) rather than a bug.

The trainer and the command-line tools catch `UserError` alone: one clear line on stderr, exit code 2.
Each subclass also keeps the built-in base its callers may catch (ValueError, RuntimeError).
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input; the message names the offending key, path or value."""
