"""Shared by the fused-op test files: the backend parameters and the interpreted-Triton child run.

Triton kernels run on CPU only when TRITON_INTERPRET=1 is set before they are defined, so on a machine
without CUDA each file runs its own triton cases in a child pytest with that variable (never leaking into
this process); with CUDA the triton cases are GPU tests (`-m gpu`) and run directly.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hnerv_fast import ops
from hnerv_fast.ops import _backends

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
TRITON_HERE = HAS_TRITON and (HAS_CUDA or _backends.triton_interpreted())
GPU = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]


def backend_params():
    """reference, cpp (CPU), triton (GPU, or CPU interpreted in the child run) and cuda (GPU)."""
    return [
        pytest.param("reference", id="reference"),
        pytest.param("cpp", id="cpp", marks=pytest.mark.skipif(
            "cpp" not in ops.available_backends("cpu"), reason=f"C++ extension not built: {_backends.load_error('cpp')}")),
        pytest.param("triton", id="triton", marks=[pytest.mark.skipif(
            not TRITON_HERE, reason="triton needs CUDA; on CPU it runs in this file's TRITON_INTERPRET=1 child run"),
            *([pytest.mark.gpu] if HAS_CUDA else [])]),
        pytest.param("cuda", id="cuda", marks=GPU),
    ]


def backend_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "cuda" or (name == "triton" and HAS_CUDA) else "cpu")


def interpreter_blocked() -> str | None:
    """Why this triton's interpreter cannot run our kernels, or None: before triton 3.8 it converts a loaded
    scalar (a 1-element array) with int(), which numpy 2.4 refuses (torch 2.11 comes with triton 3.6)."""
    import numpy
    import triton

    def major_minor(version: str) -> tuple[int, int]:
        return tuple(int(part) for part in re.findall(r"\d+", version)[:2])

    if major_minor(triton.__version__) < (3, 8) and major_minor(numpy.__version__) >= (2, 4):
        return (f"triton {triton.__version__}'s interpreter fails with numpy {numpy.__version__} (int() of a "
                "1-element array): install numpy<2.4 or triton>=3.8 to run the interpreted triton cases")
    return None


def parent_on_cpu(test):
    """Marks the test that starts the child run: it runs only on CPU, outside the child."""
    test = pytest.mark.skipif(HAS_CUDA or _backends.triton_interpreted(),
                              reason="with CUDA (or inside the child run) the triton cases run directly")(test)
    if not HAS_TRITON:
        return pytest.mark.skip(reason="triton is not installed")(test)
    blocked = interpreter_blocked()
    return pytest.mark.skipif(blocked is not None, reason=blocked or "")(test)


def run_triton_interpreted(test_file: str, select: str, passed: int, exact: bool = False, timeout: int = 900) -> None:
    """Run `test_file`'s cases selected by `-k select` in a TRITON_INTERPRET=1 child pytest; assert it passed
    with at least (`exact`: exactly) `passed` tests and skipped none (a skip there hides a backend)."""
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # keep the caller's entries
    env = dict(os.environ, TRITON_INTERPRET="1", HNERV_FAST_OPS_BACKEND="auto", PYTHONPATH=path)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", test_file, "-k", select]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"triton (interpreted) cases failed:\n{tail}"
    summary = [ln for ln in proc.stdout.splitlines() if " passed" in ln]
    assert summary, tail
    m = re.search(r"(\d+) passed", summary[-1])
    count = int(m.group(1)) if m else 0
    assert (count == passed if exact else count >= passed) and "skipped" not in summary[-1], \
        f"triton cases did not all run: {summary[-1]}"


def use_backend(name: str) -> torch.device:
    """Select `name` and return the device its tensors go on; a silent fallback fails the test."""
    device = backend_device(name)
    ops.set_backend(name)
    assert _backends.resolve(device) == name, f"{name} fell back to {_backends.resolve(device)}"
    return device


@pytest.fixture(params=backend_params())
def backend(request):
    """(name, device) of each fused-op backend in turn (import it into a test module to use it)."""
    yield request.param, use_backend(request.param)
    ops.set_backend("auto")


@pytest.fixture(params=[pytest.param(name, marks=GPU) for name in ("cuda", "triton")])
def gpu_backend(request):
    """Each GPU backend in turn (GPU tests): its name. On a CUDA machine a backend that did not load fails."""
    use_backend(request.param)
    yield request.param
    ops.set_backend("auto")
