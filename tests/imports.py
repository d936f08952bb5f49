"""Which modules a fresh interpreter loads for an import (the import-direction tests)."""
from __future__ import annotations

import subprocess
import sys


def modules_loaded_by(*modules: str) -> set[str]:
    """Every entry of sys.modules after a fresh interpreter imported `modules` (this process's imports don't count)."""
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('\\n'.join(sys.modules))"
    r = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def within(loaded: set[str], *packages: str) -> list[str]:
    """The loaded modules that are one of `packages` or inside one."""
    return sorted(m for m in loaded if any(m == p or m.startswith(p + ".") for p in packages))
