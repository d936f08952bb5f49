"""CPU fused ops beside another busy process: each op timed quiet and beside a 2-thread torch job
(a second trainer, a DDP rank on the same cores), against its eager / foreach baseline in the same run.

An OpenMP region on small work waits for a descheduled thread when another process holds the cores;
the C++ kernels parallelise only above a grain size so that small calls stay on one thread.

Run: .venv/bin/python -m pytest benchmarks/test_ops_under_load.py --benchmark-only -s -p no:cacheprovider
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from benchmarks.inputs import foreach_norms, image_pair, log_uniform_groups
from benchmarks.ratios import record_ratio
from hnerv_fast.ops import grouped_grad_norms, patch_psnr, pixel_loss, reference, set_backend

BUSY = "import torch, time\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"


@pytest.fixture(autouse=True)
def _auto_backend_after():
    yield
    set_backend("auto")


@pytest.fixture(params=["quiet", "loaded"])
def load(request):
    if request.param == "quiet":
        yield "quiet"
        return
    proc = subprocess.Popen([sys.executable, "-c", BUSY])
    time.sleep(1.0)  # let it start computing
    try:
        yield "loaded"
    finally:
        proc.kill()
        proc.wait()


def _time(benchmark, fn, group, label):
    benchmark.pedantic(fn, rounds=50, iterations=5, warmup_rounds=5)
    record_ratio(group, label, benchmark, stat="median")  # the slow calls under load are the point


@pytest.mark.parametrize("impl", ["foreach", "cpp"])
@pytest.mark.parametrize("total", [300_000, 3_250_000])
def test_grouped_norms(benchmark, load, total, impl):
    groups = log_uniform_groups(total)
    set_backend("cpp")
    fn = (lambda: foreach_norms(groups)) if impl == "foreach" else (lambda: grouped_grad_norms(groups))
    _time(benchmark, fn, f"grad norms {total / 1e6:g}M/250t {load}", impl)


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_fusion6_fwd_bwd_small(benchmark, load, impl):
    x, y = image_pair((32, 3, 32, 32))
    set_backend(impl)

    def step():
        xr = x.detach().requires_grad_()
        pixel_loss(xr, y, "Fusion6").sum().backward()

    _time(benchmark, step, f"fusion6 fwd+bwd 32x3x32x32 {load}", impl)


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_psnr_small(benchmark, load, impl):
    x, y = image_pair((32, 3, 32, 32))
    set_backend(impl)
    fn = (lambda: reference.psnr(x, y)) if impl == "reference" else (lambda: patch_psnr(x, y))
    _time(benchmark, fn, f"psnr 32x3x32x32 {load}", impl)
