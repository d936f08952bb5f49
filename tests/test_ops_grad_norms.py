"""grouped_grad_norms: result device, the cached chunk tables, every backend against the reference,
and CUDA-graph capture (warm-up and cache-miss) on a GPU.

Triton runs natively with CUDA; on CPU test_triton_interpreted re-runs this file's triton cases in
a child pytest with TRITON_INTERPRET=1 (it must be set before the kernels are defined).
"""
from __future__ import annotations

import pytest
import torch

from hnerv_fast.ops import grouped_grad_norms, reference, set_backend
from tests.ops_backends import (HAS_CUDA, HAS_TRITON, backend, backend_params, gpu_backend,  # noqa: F401
                                parent_on_cpu, run_triton_interpreted, use_backend as _use)


@pytest.fixture(params=backend_params()[2:])
def caching_backend(request):
    """The backends that cache a device table (triton, cuda)."""
    yield request.param, _use(request.param)
    set_backend("auto")


def _cache_info(name):
    """(hits, misses, entries, captured entries) of the backend's table cache."""
    if name == "cuda":
        return tuple(torch.ops.hnerv_fast.grouped_norms_cache_info())
    from hnerv_triton import grad_norm
    return grad_norm.cache_info()


def _groups(dev, seed=0, dtypes=(torch.float32,) * 4):
    g = torch.Generator().manual_seed(seed)
    mk = lambda n, dt: torch.randn(n, generator=g).to(device=dev, dtype=dt)  # noqa: E731
    return {
        "decoder": [mk(70_000, dtypes[0]), None, mk(5, dtypes[1]), mk(16_384, dtypes[2])],
        "empty": [],
        "none": [None, None],
        "head": [mk(3 * 64 * 9, dtypes[3]), mk(0, dtypes[0]), mk(1, dtypes[1])],
    }


def _tensors(groups):
    return [t for ts in groups.values() for t in ts if t is not None]


# ------------------------------------------------------------------------------------------------
# result device
# ------------------------------------------------------------------------------------------------
def test_all_none_groups_follow_device():
    groups = {"a": [None], "b": []}
    assert grouped_grad_norms(groups).device.type == "cpu"
    out = grouped_grad_norms(groups, device=torch.device("meta"))  # any device, even without a GPU
    assert out.device.type == "meta" and out.shape == (3,) and out.dtype == torch.float32


def test_device_keyword_moves_a_computed_result(backend):
    _, dev = backend
    groups = _groups(dev)
    out = grouped_grad_norms(groups, device=torch.device("cpu"))
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, reference.grouped_grad_norms(groups).cpu(), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_all_none_groups_on_cuda_device():
    out = grouped_grad_norms({"a": [None]}, device=torch.device("cuda"))
    assert out.device.type == "cuda" and out.tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------------------------------
# every backend against the reference
# ------------------------------------------------------------------------------------------------
MIXED = [(torch.float32,) * 4, (torch.float64, torch.bfloat16, torch.float32, torch.float16)]


@pytest.mark.parametrize("dtypes", MIXED, ids=["fp32", "mixed"])
def test_matches_reference_with_empty_groups(backend, dtypes):
    _, dev = backend
    groups = _groups(dev, dtypes=dtypes)
    out = grouped_grad_norms(groups)
    assert out.shape == (5,) and out.dtype == torch.float32 and out.device.type == dev.type
    torch.testing.assert_close(out, reference.grouped_grad_norms(groups), rtol=1e-5, atol=1e-6)
    assert out[2].item() == 0.0 and out[3].item() == 0.0


def test_only_empty_tensors_give_zeros(backend):
    _, dev = backend
    out = grouped_grad_norms({"a": [torch.empty(0, device=dev)], "b": [torch.empty(0, 3, device=dev)]})
    assert out.tolist() == [0.0, 0.0, 0.0]


def test_repeated_calls_read_current_values(backend):
    """Same tensors (a cached table on triton/cuda) after in-place changes, then new tensors."""
    _, dev = backend
    groups = _groups(dev, seed=1)
    for scale in (1.0, 2.0, -0.5):
        for t in _tensors(groups):
            t.mul_(scale)
        torch.testing.assert_close(grouped_grad_norms(groups), reference.grouped_grad_norms(groups),
                                   rtol=1e-5, atol=1e-6)
    other = _groups(dev, seed=2)
    torch.testing.assert_close(grouped_grad_norms(other), reference.grouped_grad_norms(other), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# table cache (triton: in-process on CPU tensors; cuda: through its diagnostics op)
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_table_cache_hits_misses_and_bound():
    from hnerv_triton.grad_norm import TableCache

    cache = TableCache(max_entries=3)
    a = [torch.randn(40_000), torch.randn(7, dtype=torch.float64)]
    t1 = cache.get(a, [0, 1], 2)
    assert cache.get(a, [0, 1], 2) is t1 and cache.info() == (1, 1, 1, 0)
    assert cache.get(a, [1, 1], 2) is not t1  # same tensors, other groups: another signature
    b = [torch.randn(40_000), a[1]]
    assert cache.get(b, [0, 1], 2) is not t1
    assert cache.info()[:2] == (1, 3)
    t1.captured = True  # as if a CUDA graph read it: kept past the bound
    for i in range(6):
        cache.get([torch.randn(10 + i)], [0], 1)
    hits, misses, entries, captured = cache.info()
    assert (misses, entries, captured) == (9, 4, 1)
    assert cache.get(a, [0, 1], 2) is t1
    # the table: chunk addresses, lengths, group-ordered slots, group offsets
    n = t1.nchunks
    assert n == 4  # 40_000 float32 in 16K chunks (3) + one tiny float64 chunk
    assert t1.dev[:n].tolist() == [a[0].data_ptr() + 4 * s for s in (0, 16384, 32768)] + [a[1].data_ptr()]
    assert t1.dev[n:2 * n].tolist() == [16384, 16384, 40_000 - 32768, 7]
    assert t1.dev[3 * n:].tolist() == [0, 3, 4]


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_table_cache_checks_every_new_signature():
    """Only a miss checks the tensors (a hit repeats a checked signature), and a failed check caches nothing."""
    from hnerv_triton.grad_norm import TableCache

    cache = TableCache()
    for _ in range(2):
        with pytest.raises(ValueError, match="group id 1 out of range"):
            cache.get([torch.randn(3)], [1], 1)
    with pytest.raises(ValueError, match="unsupported dtype torch.int32"):
        cache.get([torch.randn(3), torch.zeros(3, dtype=torch.int32)], [0, 0], 1)
    with pytest.raises(ValueError, match="tensor 1 is on meta"):
        cache.get([torch.randn(3), torch.empty(3, device="meta")], [0, 0], 1)
    assert cache.info() == (0, 0, 0, 0)


def test_cache_reuses_table_for_same_tensors(caching_backend):
    name, dev = caching_backend
    groups = _groups(dev, seed=3)
    grouped_grad_norms(groups)
    h0, m0, _, _ = _cache_info(name)
    for _ in range(3):
        grouped_grad_norms(groups)
    h1, m1, _, _ = _cache_info(name)
    assert (h1 - h0, m1 - m0) == (3, 0)
    for i in range(10):  # changing sets of tensors stay bounded
        grouped_grad_norms({"g": [torch.randn(100 + i, device=dev)]})
    _, _, entries, captured = _cache_info(name)
    assert entries - captured <= 4


# ------------------------------------------------------------------------------------------------
# triton on CPU: this file's triton cases in a TRITON_INTERPRET=1 child process
# ------------------------------------------------------------------------------------------------
@parent_on_cpu
def test_triton_interpreted():
    run_triton_interpreted(__file__, "triton and not gpu and not interpreted", passed=6)


# ------------------------------------------------------------------------------------------------
# GPU: CUDA-graph capture, launches per call
# ------------------------------------------------------------------------------------------------
def _recycle_pinned():
    """Allocate and free pinned blocks: a graph that copies from a freed block would read these."""
    sizes = (8, 15, 16, 32, 64, 128, 512)
    junk = [torch.full((n,), -1, dtype=torch.int64).pin_memory() for n in sizes for _ in range(8)]
    del junk


def _warm_up(groups):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            grouped_grad_norms(groups)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.parametrize("max_norm", [None, 1.0])
def test_capture_after_warm_up_replays_current_values(gpu_backend, max_norm):
    dev = torch.device("cuda")
    groups = _groups(dev, seed=4, dtypes=MIXED[1])
    _warm_up(groups)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = grouped_grad_norms(groups, max_norm=max_norm)
    _recycle_pinned()
    for scale in (2.0, 0.25):
        for t in _tensors(groups):
            t.mul_(scale)
        expect_groups = {k: [None if t is None else t.clone() for t in v] for k, v in groups.items()}
        expect = reference.grouped_grad_norms(expect_groups, max_norm=max_norm)
        g.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-5)
        for a, b in zip(_tensors(groups), _tensors(expect_groups)):  # clipping replayed too
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)


@pytest.mark.gpu
def test_capture_on_cache_miss(gpu_backend):
    """Tensors first seen inside the capture: the recorded copy's pinned source stays alive; an
    eager call before any replay still sees a filled table; the entry is kept."""
    name, dev = gpu_backend, torch.device("cuda")
    warm = _groups(dev, seed=5)
    _warm_up(warm)  # compile / load kernels for these dtypes first
    # warm stays alive: freed, its blocks would come back to the new tensors at the same addresses, and
    # the table cached for those pointers would be a hit (a correct one, but not the miss tested here)
    groups = _groups(dev, seed=6)
    _, m0, _, c0 = _cache_info(name)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = grouped_grad_norms(groups)
    _, m1, _, c1 = _cache_info(name)
    assert (m1 - m0, c1 - c0) == (1, 1)
    _recycle_pinned()
    torch.testing.assert_close(grouped_grad_norms(groups), reference.grouped_grad_norms(groups), rtol=1e-5, atol=1e-6)
    for i in range(8):  # overflow the LRU: the captured entry must survive
        grouped_grad_norms({"g": [torch.randn(50 + i, device=dev)]})
    for t in _tensors(groups):
        t.mul_(3.0)
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, reference.grouped_grad_norms(groups), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_cached_call_is_two_kernels_and_no_copy(gpu_backend):
    dev = torch.device("cuda")
    groups = _groups(dev, seed=7)  # one dtype
    grouped_grad_norms(groups)
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        grouped_grad_norms(groups)
        torch.cuda.synchronize()
    dev_events = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    copies = [n for n in dev_events if "memcpy" in n.lower() or "memset" in n.lower()]
    kernels = [n for n in dev_events if n not in copies]
    assert not copies, dev_events
    assert 1 <= len(kernels) <= 2, dev_events
