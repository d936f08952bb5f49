"""Fused ops vs their plain-torch baselines (pytest-benchmark; baseline and fast path in the same run).

    .venv/bin/python -m pytest benchmarks/test_ops_bench.py --benchmark-only -p no:cacheprovider

Cases (CPU unless a GPU is present: then the same cases run on CUDA with the auto backend):
  psnr        eager reference  vs  patch_psnr (fused kernel)
  fusion6     0.7*L1 + 0.3*(1 - pytorch_msssim.ssim) with autograd  vs  pixel_loss("Fusion6"), fwd+bwd
  fusion10    reference MS-SSIM formulation with autograd  vs  pixel_loss("Fusion10"), fwd+bwd
  grad_norms  torch._foreach_norm + per-group stacking  vs  grouped_grad_norms, ~251 tensors
Shapes: 8 patches x batch 32 at 3x80x160 (256x3x80x160) and a tiny 32x3x32x32.
A table of median times and speed-ups is printed at the end of the module.
"""
from __future__ import annotations

import pytest
import torch

from hnerv_fast.ops import grouped_grad_norms, patch_psnr, pixel_loss, reference, set_backend
from hnerv_fast.ops import _backends
from benchmarks.inputs import foreach_norms, image_pair

pm = pytest.importorskip("pytorch_msssim")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SHAPES = {"big": (256, 3, 80, 160), "tiny": (32, 3, 32, 32)}
_results: dict = {}


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    set_backend("auto")
    yield
    tr = request.config.pluginmanager.getplugin("terminalreporter")
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if tr is None or not _results:
        return
    fast_backend = _backends.resolve(DEVICE)
    lines = ["", f"fused ops on {DEVICE.type} (fast backend: {fast_backend}, torch threads: {torch.get_num_threads()})",
             f"{'case':<28}{'baseline ms':>14}{'fused ms':>12}{'speed-up':>10}"]
    for case in sorted({c for c, _ in _results}):
        base, fast = _results.get((case, "baseline")), _results.get((case, "fused"))
        if base is not None and fast is not None:
            lines.append(f"{case:<28}{base * 1e3:>14.3f}{fast * 1e3:>12.3f}{base / fast:>9.2f}x")
    with capman.global_and_fixture_disabled():
        for line in lines:
            tr.write_line(line)


def _record(benchmark, case, impl):
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        _results[(case, impl)] = stats.stats.median


def _run(benchmark, fn, case, impl, rounds=None):
    def timed():
        fn()
        _sync()

    if rounds is None:
        benchmark(timed)
    else:
        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
    _record(benchmark, case, impl)


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["big", "tiny"])
@pytest.mark.parametrize("impl", ["baseline", "fused"])
def test_psnr(benchmark, size, impl):
    x, y = image_pair(SHAPES[size], DEVICE)
    benchmark.group = f"psnr-{size}"
    fn = (lambda: reference.psnr(x, y)) if impl == "baseline" else (lambda: patch_psnr(x, y))
    _run(benchmark, fn, f"psnr {size}", impl)


def _fusion6_msssim(x, y):
    l1 = (x - y).abs().flatten(1).mean(1)
    return 0.7 * l1 + 0.3 * (1 - pm.ssim(x, y, data_range=1.0, size_average=False))


@pytest.mark.parametrize("size", ["big", "tiny"])
@pytest.mark.parametrize("impl", ["baseline", "fused"])
def test_fusion6_fwd_bwd(benchmark, size, impl):
    x, y = image_pair(SHAPES[size], DEVICE)
    benchmark.group = f"fusion6-fwd-bwd-{size}"
    loss_fn = _fusion6_msssim if impl == "baseline" else (lambda a, b: pixel_loss(a, b, "Fusion6"))

    def step():
        xr = x.detach().requires_grad_()
        loss_fn(xr, y).mean().backward()

    rounds = (3 if impl == "baseline" else 5) if size == "big" and DEVICE.type == "cpu" else None
    _run(benchmark, step, f"fusion6 fwd+bwd {size}", impl, rounds)


@pytest.mark.parametrize("size", ["big", "tiny"])
@pytest.mark.parametrize("impl", ["baseline", "fused"])
def test_fusion10_fwd_bwd(benchmark, size, impl):
    x, y = image_pair(SHAPES[size], DEVICE)
    benchmark.group = f"fusion10-fwd-bwd-{size}"
    if impl == "baseline":
        def loss_fn(a, b):
            return reference.pixel_loss(a, b, "Fusion10")
    else:
        def loss_fn(a, b):
            return pixel_loss(a, b, "Fusion10")

    def step():
        xr = x.detach().requires_grad_()
        loss_fn(xr, y).mean().backward()

    rounds = (3 if impl == "baseline" else 5) if size == "big" and DEVICE.type == "cpu" else None
    _run(benchmark, step, f"fusion10 fwd+bwd {size}", impl, rounds)


# ------------------------------------------------------------------------------------------------
def _model_grads():
    """~250 gradient tensors shaped like a dual-head HNeRV (~12M parameters), in 3 groups."""
    g = torch.Generator().manual_seed(1)
    mk = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    decoder = [mk(1024, 480), mk(1024)]  # stem: linear 480 (pos. enc.) -> fc_dim*fc_h*fc_w
    chans = [16 * 8, 112, 96, 80, 64, 48]
    while len(decoder) < 215:
        for cin, cout in zip(chans[:-1], chans[1:]):
            decoder += [mk(cout * 4, cin, 3, 3), mk(cout * 4), mk(cout), mk(cout), mk(cout, cout, 1, 1), mk(cout)]
            if len(decoder) >= 215:
                break
    rgb = [mk(3, 48, 3, 3), mk(3), mk(48), mk(48), mk(48, 48, 3, 3), mk(48)]
    clip = []
    while len(clip) < 30:
        clip += [mk(96, 48), mk(96), mk(512, 96), mk(512), mk(96), mk(96)]
    return {"decoder": decoder, "rgb_head": rgb, "clip_head": clip}


@pytest.mark.parametrize("impl", ["baseline", "fused"])
def test_grouped_grad_norms(benchmark, impl):
    groups = _model_grads()
    n_tensors = sum(len(v) for v in groups.values())
    n_params = sum(t.numel() for v in groups.values() for t in v)
    benchmark.group = "grouped-grad-norms"
    benchmark.extra_info.update(tensors=n_tensors, params=n_params)
    torch.testing.assert_close(foreach_norms(groups), grouped_grad_norms(groups), rtol=1e-4, atol=1e-3)
    fn = (lambda: foreach_norms(groups)) if impl == "baseline" else (lambda: grouped_grad_norms(groups))
    _run(benchmark, fn, f"grad norms {n_tensors}t/{n_params / 1e6:.1f}M", impl)
