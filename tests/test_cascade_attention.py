"""The cascade's attention: the matmul formulation used for bf16 under torch.compile on a CPU is the same
function as scaled-dot-product attention (float64, forward and backward), rounds like bf16 attention, and
is the one a compiled bf16 block runs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hnerv_fast.models import vit3d
from hnerv_fast.models.vit3d import AdaLNBlock, attention, matmul_attention


def _qkv(dtype, seed=0, shape=(2, 2, 24, 8)):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g, dtype=torch.float64) * 1.5).to(dtype).requires_grad_()
            for _ in range(3)]


def test_matmul_attention_is_sdpa_in_float64():
    q, k, v = _qkv(torch.float64)
    torch.testing.assert_close(matmul_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    assert torch.autograd.gradcheck(matmul_attention, _qkv(torch.float64, shape=(1, 2, 6, 4)))


def test_matmul_attention_in_bf16_rounds_like_bf16_sdpa():
    q, k, v = _qkv(torch.bfloat16, shape=(2, 2, 128, 32))
    exact = F.scaled_dot_product_attention(*(t.double() for t in (q, k, v)))
    err_matmul = (matmul_attention(q, k, v).double() - exact).abs().max().item()
    err_sdpa = (F.scaled_dot_product_attention(q, k, v).double() - exact).abs().max().item()
    # the scores are rounded to bf16 once before the float32 softmax: a few bf16 steps of the output at most
    assert err_matmul < max(4 * err_sdpa, 0.03)
    g = torch.randn(q.shape, dtype=torch.bfloat16)
    grads = torch.autograd.grad(matmul_attention(q, k, v), (q, k, v), g)
    exact_grads = torch.autograd.grad(exact, (q, k, v), g.double(), allow_unused=True)
    for got, want in zip(grads, exact_grads):
        assert (got.double() - want).abs().max() <= 0.05 * want.abs().max()


def test_eager_and_float32_use_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr(vit3d, "matmul_attention", lambda *a: calls.append(1))
    for dtype in (torch.float32, torch.bfloat16):
        attention(*_qkv(dtype))
    assert not calls  # not compiling: flash attention, whatever the dtype


@pytest.mark.slow  # an inductor compile (~10 s on 2 cores)
def test_compiled_bf16_block_runs_the_matmul_formulation_and_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = AdaLNBlock(32, 2, cond_dim=16, mlp_ratio=2.0)
    x, cond = torch.randn(2, 64, 32), torch.randn(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = block(x, cond)
        compiled_fn = torch.compile(block, fullgraph=True)
        compiled = compiled_fn(x, cond)
    torch.testing.assert_close(compiled.float(), eager.float(), rtol=0.05, atol=0.05)
    graphs = []  # the traced graph has no SDPA node: the matmul path ran
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.compile(block, backend=lambda gm, _: graphs.append(gm) or gm.forward, fullgraph=True)(x, cond)
    targets = {str(n.target) for gm in graphs for n in gm.graph.nodes}
    assert not any("scaled_dot_product" in t for t in targets), targets
    assert any("softmax" in t for t in targets), targets
