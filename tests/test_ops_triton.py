"""Runs the triton cases of test_ops_backends.py on CPU through the Triton interpreter.

TRITON_INTERPRET must be set before the Triton kernels are defined, so the cases run in a child
pytest process with that variable set (tests/ops_backends.py); it never leaks into this process or
other tests. With a CUDA device the triton cases run directly in test_ops_backends.py instead.
"""
from __future__ import annotations

from tests.ops_backends import ROOT, parent_on_cpu, run_triton_interpreted


@parent_on_cpu
def test_triton_backend_interpreted_on_cpu():
    run_triton_interpreted(str(ROOT / "tests" / "test_ops_backends.py"), "triton", passed=40, timeout=600)
