"""Public API of hnerv_fast.ops: argument errors, backend choice and fallback, torch.compile."""
from __future__ import annotations

import warnings

import pytest
import torch

from hnerv_fast import ops
from hnerv_fast.ops import (PIXEL_LOSSES, get_backend, grouped_grad_norms, patch_psnr, pixel_loss, reference,
                            set_backend)
from hnerv_fast.ops import _backends

HAS_CPP = "cpp" in ops.available_backends("cpu")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason=f"C++ extension not built: {_backends.load_error('cpp')}")


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    set_backend("auto")


def test_public_names():
    for name in ("patch_psnr", "pixel_loss", "grouped_grad_norms", "set_backend", "get_backend", "PIXEL_LOSSES"):
        assert hasattr(ops, name)
    assert len(PIXEL_LOSSES) == 16


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_bad_arguments_raise_value_error(backend):
    set_backend(backend)
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="shapes differ"):
        pixel_loss(x, torch.rand(2, 3, 16, 15), "L1")
    with pytest.raises(ValueError, match="shapes differ"):
        patch_psnr(x, torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        patch_psnr(x[0], x[0])
    with pytest.raises(ValueError, match="at least 11x11"):
        pixel_loss(torch.rand(1, 3, 10, 40), torch.rand(1, 3, 10, 40), "SSIM")
    with pytest.raises(ValueError, match="at least 11x11"):
        pixel_loss(torch.rand(1, 3, 40, 10), torch.rand(1, 3, 40, 10), "MS-SSIM")
    with pytest.raises(ValueError, match="unknown pixel loss"):
        pixel_loss(x, x, "L3")
    with pytest.raises(ValueError, match="floating"):
        patch_psnr(x.to(torch.uint8), x.to(torch.uint8))
    # L1 / L2 have no window, so tiny images are fine
    assert pixel_loss(torch.rand(2, 1, 1, 3), torch.rand(2, 1, 1, 3), "Fusion8").shape == (2,)


@needs_cpp
def test_cpp_op_raises_value_error_directly():
    with pytest.raises(ValueError, match="at least 11x11"):
        torch.ops.hnerv_fast.ssim_fwd(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), 1, False)
    with pytest.raises(ValueError, match="shapes differ"):
        torch.ops.hnerv_fast.psnr(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))


def test_set_backend_validation_and_get_backend():
    with pytest.raises(ValueError, match="unknown ops backend"):
        set_backend("fortran")
    set_backend("reference")
    assert get_backend() == "reference"
    assert _backends.resolve(torch.device("cpu")) == "reference"
    set_backend("auto")
    assert get_backend() == "auto"
    assert _backends.resolve(torch.device("cpu")) == ("cpp" if HAS_CPP else "reference")


@needs_cpp
def test_unavailable_backend_warns_once_and_falls_back():
    _backends._warned.discard(("cuda", "cpu"))
    _backends._resolved.pop(("cuda", "cpu"), None)
    with pytest.warns(RuntimeWarning, match="backend 'cuda' cannot run on cpu tensors"):
        set_backend("cuda")
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pixel_loss(x, y, "Fusion6")  # no second warning, no crash
        set_backend("cuda")
        patch_psnr(x, y)
    assert _backends.resolve(x.device) == "cpp"
    torch.testing.assert_close(out, reference.pixel_loss(x, y, "Fusion6"), rtol=1e-5, atol=1e-6)


@needs_cpp
def test_fast_path_really_runs_the_fused_ops(monkeypatch):
    """The cpp backend must not fall back to the reference math (forward or backward)."""
    set_backend("cpp")
    x = torch.rand(2, 3, 24, 24, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    expect = reference.pixel_loss(x, y, "Fusion10")

    def boom(*a, **k):
        raise AssertionError("reference path used")

    for name in ("pixel_loss", "ssim_maps", "blur_valid", "psnr", "grouped_grad_norms"):
        monkeypatch.setattr(reference, name, boom)
    loss = pixel_loss(x, y, "Fusion10")
    loss.sum().backward()
    patch_psnr(x, y)
    grouped_grad_norms({"g": [x.grad]})
    torch.testing.assert_close(loss, expect)


def _all_ops(x, y, w, b):
    l6 = pixel_loss(x, y, "Fusion6").mean()
    l10 = pixel_loss(x, y, "Fusion10").mean()
    p = patch_psnr(x, y)
    n = grouped_grad_norms({"a": [w], "b": [b, None]}, max_norm=1.0)
    return l6 + l10, p, n


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_torch_compile_fullgraph_no_graph_break(backend):
    if backend == "cpp" and not HAS_CPP:
        pytest.skip("C++ extension not built")
    set_backend(backend)
    torch._dynamo.reset()
    x = torch.rand(2, 3, 24, 24, requires_grad=True)
    y = torch.rand(2, 3, 24, 24)
    w, b = torch.randn(10, 10), torch.randn(10)
    compiled = torch.compile(_all_ops, fullgraph=True, backend="aot_eager")  # fullgraph: a break raises
    loss, p, n = compiled(x, y, w.clone(), b.clone())
    loss.backward()
    g = x.grad.clone()
    x.grad = None
    loss_e, p_e, n_e = _all_ops(x, y, w.clone(), b.clone())
    loss_e.backward()
    torch.testing.assert_close(loss, loss_e)
    torch.testing.assert_close(p, p_e)
    torch.testing.assert_close(n, n_e)
    torch.testing.assert_close(g, x.grad)


@pytest.mark.slow
@needs_cpp
def test_torch_compile_inductor_cpp_ops():
    set_backend("cpp")
    torch._dynamo.reset()
    x = torch.rand(2, 3, 24, 24, requires_grad=True)
    y = torch.rand(2, 3, 24, 24)
    compiled = torch.compile(_all_ops, fullgraph=True)
    w, b = torch.randn(10, 10), torch.randn(10)
    loss, p, n = compiled(x, y, w.clone(), b.clone())
    loss.backward()
    loss_e, p_e, n_e = _all_ops(x.detach(), y, w.clone(), b.clone())
    torch.testing.assert_close(loss, loss_e)
    torch.testing.assert_close(n, n_e)
