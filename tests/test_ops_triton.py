"""Runs the triton cases of test_ops_backends.py on CPU through the Triton interpreter.

TRITON_INTERPRET must be set before the Triton kernels are defined, so the cases run in a child
pytest process with that variable set; it never leaks into this process or other tests. With a
CUDA device the triton cases run directly in test_ops_backends.py instead.
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

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the triton cases run natively in test_ops_backends.py")
def test_triton_backend_interpreted_on_cpu():
    env = dict(os.environ, TRITON_INTERPRET="1", HNERV_FAST_OPS_BACKEND="auto")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
           str(ROOT / "tests" / "test_ops_backends.py"), "-k", "triton"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"triton (interpreted) cases failed:\n{tail}"
    summary = [ln for ln in proc.stdout.splitlines() if " passed" in ln]
    assert summary, tail
    m = re.search(r"(\d+) passed", summary[-1])
    assert m and int(m.group(1)) >= 40 and "skipped" not in summary[-1], f"triton cases did not all run: {summary[-1]}"
