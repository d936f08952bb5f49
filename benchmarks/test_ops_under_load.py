"""CPU fused ops beside another busy process: each op timed quiet and beside a 2-thread torch job
(a second trainer, a DDP rank on the same cores), against its eager / foreach baseline in the same run.

An OpenMP region on small work waits for a descheduled thread when another process holds the cores;
the C++ kernels parallelise only above a grain size so that small calls stay on one thread.

Run: .venv/bin/python -m pytest benchmarks/test_ops_under_load.py --benchmark-only -s -p no:cacheprovider
"""
from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
import torch

from benchmarks.ratios import record_ratio
from hnerv_fast.ops import grouped_grad_norms, patch_psnr, pixel_loss, reference, set_backend

BUSY = "import torch, time\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"


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


def _groups(total: int) -> dict[str, list[torch.Tensor]]:
    """250 gradients with log-uniform sizes in 3 groups, `total` elements."""
    g = torch.Generator().manual_seed(1)
    w = torch.exp(torch.rand(250, generator=g) * math.log(1e4))
    ts = [torch.randn(int(s), generator=g) for s in (w / w.sum() * total).long().clamp_(min=1).tolist()]
    return {"decoder": ts[:200], "rgb_head": ts[200:215], "clip_head": ts[215:]}


def _foreach_norms(groups):
    per = torch.stack([torch.linalg.vector_norm(torch.stack(torch._foreach_norm(ts))) for ts in groups.values()])
    return torch.cat([torch.linalg.vector_norm(per).reshape(1), per])


def _time(benchmark, fn, group, label):
    benchmark.pedantic(fn, rounds=50, iterations=5, warmup_rounds=5)
    record_ratio(group, label, benchmark, stat="median")  # the slow calls under load are the point


@pytest.mark.parametrize("impl", ["foreach", "cpp"])
@pytest.mark.parametrize("total", [300_000, 3_250_000])
def test_grouped_norms(benchmark, load, total, impl):
    groups = _groups(total)
    set_backend("cpp")
    fn = (lambda: _foreach_norms(groups)) if impl == "foreach" else (lambda: grouped_grad_norms(groups))
    _time(benchmark, fn, f"grad norms {total / 1e6:g}M/250t {load}", impl)
    set_backend("auto")


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_fusion6_fwd_bwd_small(benchmark, load, impl):
    x = torch.rand(32, 3, 32, 32)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    set_backend(impl)

    def step():
        xr = x.detach().requires_grad_()
        pixel_loss(xr, y, "Fusion6").sum().backward()

    _time(benchmark, step, f"fusion6 fwd+bwd 32x3x32x32 {load}", impl)
    set_backend("auto")


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_psnr_small(benchmark, load, impl):
    x = torch.rand(32, 3, 32, 32)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    set_backend(impl)
    fn = (lambda: reference.psnr(x, y)) if impl == "reference" else (lambda: patch_psnr(x, y))
    _time(benchmark, fn, f"psnr 32x3x32x32 {load}", impl)
    set_backend("auto")
