"""Cascade stage model: ViT pieces, shapes, gradients, validation, loss helper, sampling."""


from pathlib import Path

import pytest
import torch

from hnerv_fast.config import ConfigError, load_config
from hnerv_fast.config.cascade import StageConfig
from hnerv_fast.models.cascade import CascadeStage, DepthLift, upsample_volume
from hnerv_fast.models.cascade_diffusion import diffusion_and_physics_loss, sample_cascade, sample_stage
from hnerv_fast.models.diffusion import CosineSchedule, q_sample, v_target
from hnerv_fast.models.drr import drr_views, physics_loss
from hnerv_fast.models.vit3d import AdaLNBlock, patchify3d, timestep_embedding, unpatchify3d


def _tiny(S=16, views=2, xa=False, xray_size=32, **kw):
    """A small stage model (as configs/cascade_tiny.yaml's) with the first ``views`` views."""
    stage = StageConfig(size=S, width=64, depth=2, heads=2, patch=4, encoder_channels=16, lift_channels=4,
                        mlp_ratio=2.0, cross_attention=xa, **kw)
    return CascadeStage(stage, f"stage_{S}", xray_size, ("frontal", "lateral")[:views])


@pytest.fixture(scope="module")
def sched():
    return CosineSchedule(1000)


# -- building blocks ----------------------------------------------------------------------------
def test_patchify_roundtrip_and_order():
    x = torch.randn(2, 3, 8, 12, 4)
    tok = patchify3d(x, 4)
    assert tok.shape == (2, 2 * 3 * 1, 3 * 64)
    torch.testing.assert_close(tok[0, 0], x[0, :, :4, :4, :4].reshape(-1))
    torch.testing.assert_close(tok[1, 1], x[1, :, :4, 4:8, :4].reshape(-1))
    torch.testing.assert_close(unpatchify3d(tok, 4, 3, (2, 3, 1)), x, rtol=0, atol=0)
    with pytest.raises(ValueError):
        patchify3d(x, 5)
    with pytest.raises(ValueError):
        unpatchify3d(tok, 4, 3, 2)


def test_timestep_embedding():
    t = torch.tensor([0, 10, 999])
    e = timestep_embedding(t, 33)
    assert e.shape == (3, 33)
    torch.testing.assert_close(e[0, :16], torch.ones(16))      # cos(0)
    torch.testing.assert_close(e[0, 16:32], torch.zeros(16))   # sin(0)
    assert not torch.allclose(e[1], e[2])


def test_adaln_block_conditioning_matters_and_cross_attention_needs_context():
    blk = AdaLNBlock(32, 4, cond_dim=16, cross_attention=True, context_dim=8)
    x, ctx = torch.randn(2, 10, 32), torch.randn(2, 5, 8)
    c1, c2 = torch.randn(2, 16), torch.randn(2, 16)
    assert blk(x, c1, ctx).shape == x.shape
    assert not torch.allclose(blk(x, c1, ctx), blk(x, c2, ctx))
    with pytest.raises(ValueError):
        blk(x, c1, None)


def test_depth_lift_orientation():
    lift = DepthLift(("frontal", "lateral"), channels=1, size=4)
    with torch.no_grad():
        lift.weight.zero_()
        lift.weight[0, 0, 1] = 1.0      # frontal: only depth index d = 1
        lift.weight[1, 0, 2] = 1.0      # lateral: only width index w = 2
    f = torch.arange(16.0).reshape(4, 4)        # frontal image (h, w)
    g = 100 + torch.arange(16.0).reshape(4, 4)  # lateral image (h, d)
    vol = lift(torch.stack([f, g])[None, :, None])[0, 0] * 2   # undo the mean over 2 views
    torch.testing.assert_close(vol[1], f + torch.where(torch.arange(4) == 2, g[:, 1:2], 0.0))
    torch.testing.assert_close(vol[:, :, 2].T, g + torch.where(torch.arange(4) == 1, f[:, 2:3], 0.0))
    assert float(vol[0, 0, 0].detach()) == 0.0


# -- config ------------------------------------------------------------------------------------
def test_the_stage_section_is_the_model_spec():
    model = _tiny()
    assert model.views == ("frontal", "lateral") and model.size == 16
    assert model.stage.grid == 4 and model.stage.num_tokens == 64 == model.pos_embed.shape[1]
    assert _tiny(views=1).views == ("frontal",)
    for stage, match in [(StageConfig(size=18, patch=4), "stages.s.patch: size 18 is not divisible by patch 4"),
                         (StageConfig(width=63, heads=2), "stages.s.heads: width 63"),
                         (StageConfig(depth=0), "stages.s.depth: must be >= 1")]:
        with pytest.raises(ConfigError, match=match):
            CascadeStage(stage, "s", 32, ("frontal",))
    for views in [("axial",), ("frontal", "frontal"), ("frontal", "lateral", "frontal")]:
        with pytest.raises(ConfigError, match="views"):
            CascadeStage(StageConfig(size=16), "s", 32, views)


def test_default_config_holds_the_published_stages():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "cascade_default.yaml")
    assert [(cfg.stages[n].size, cfg.stages[n].width, cfg.stages[n].depth, cfg.stages[n].heads)
            for n in cfg.cascade_order()] == [(64, 256, 4, 4), (128, 384, 6, 6), (256, 512, 8, 8)]
    assert cfg.data.xray_size == 512 and len(cfg.data.views) == 2
    m = CascadeStage(cfg.stages["stage_64"], "stage_64", cfg.data.xray_size, cfg.data.views)  # builds; no forward on CPU
    assert m.pos_embed.shape == (1, 4096, 256)


# -- forward / backward -----------------------------------------------------------------------
@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("with_prev", [False, True])
@pytest.mark.parametrize("xa", [False, True])
def test_forward_shapes_and_all_parameters_get_gradients(views, with_prev, xa):
    torch.manual_seed(0)
    model = _tiny(16, views, xa)
    B = 2
    x = torch.randn(B, 1, 16, 16, 16)
    t = torch.tensor([3, 800])
    xr = torch.rand(B, views, 32, 32)
    prev = torch.rand(B, 1, 8, 8, 8) if with_prev else None
    out = model(x, t, xr, prev)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_inputs_condition_the_output():
    torch.manual_seed(0)
    model = _tiny().eval()
    x, t = torch.randn(1, 1, 16, 16, 16), torch.tensor([500])
    xr, prev = torch.rand(1, 2, 32, 32), torch.rand(1, 1, 8, 8, 8)
    base = model(x, t, xr, prev)
    assert not torch.allclose(base, model(x, torch.tensor([10]), xr, prev))
    assert not torch.allclose(base, model(x, t, torch.rand(1, 2, 32, 32), prev))
    assert not torch.allclose(base, model(x, t, xr, None))


def test_shape_errors_are_clear():
    model = _tiny(16, 2)
    x, t, xr = torch.randn(2, 1, 16, 16, 16), torch.tensor([1, 2]), torch.rand(2, 2, 32, 32)
    with pytest.raises(ValueError, match="x_t"):
        model(torch.randn(2, 1, 32, 32, 32), t, xr)
    with pytest.raises(ValueError, match="x_t"):
        model(torch.randn(2, 1, 16, 16, 8), t, xr)
    with pytest.raises(ValueError, match="xrays"):
        model(x, t, torch.rand(2, 2, 64, 64))
    with pytest.raises(ValueError, match="xrays"):
        model(x, t, torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\bt\b"):
        model(x, torch.tensor([1]), xr)
    with pytest.raises(ValueError, match="prev_volume"):
        model(x, t, xr, torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="prev_volume"):
        model(x, t, xr, torch.rand(2, 1, 8, 8, 4))


def test_grad_checkpointing_matches():
    torch.manual_seed(0)
    a = _tiny()
    b = _tiny(grad_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x, t, xr = torch.randn(1, 1, 16, 16, 16), torch.tensor([5]), torch.rand(1, 2, 32, 32)
    oa, ob = a(x, t, xr), b(x, t, xr)
    torch.testing.assert_close(oa, ob)
    oa.sum().backward()
    ob.sum().backward()
    torch.testing.assert_close(a.patch_embed.weight.grad, b.patch_embed.weight.grad)


def test_upsample_volume():
    v = torch.rand(2, 1, 8, 8, 8)
    assert upsample_volume(v, 8) is v
    up = upsample_volume(v, 16)
    assert up.shape == (2, 1, 16, 16, 16)
    torch.testing.assert_close(upsample_volume(torch.full((1, 1, 4, 4, 4), 0.3), 16),
                               torch.full((1, 1, 16, 16, 16), 0.3))


# -- loss helper / sampling -------------------------------------------------------------------
def _batch(S=16, views=("frontal", "lateral"), B=2):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(B, 1, S, S, S, generator=g)
    return x0, drr_views(x0, views, out_size=32)


def test_loss_helper_values_and_determinism(sched):
    torch.manual_seed(0)
    model = _tiny()
    x0, xr = _batch()
    prev = torch.rand(2, 1, 8, 8, 8)
    total, dif, phy = diffusion_and_physics_loss(model, sched, x0, xr, None, prev, 0.5,
                                                 torch.Generator().manual_seed(3))
    assert total.dim() == 0 and torch.isfinite(total)
    torch.testing.assert_close(total, dif + 0.5 * phy)
    again = diffusion_and_physics_loss(model, sched, x0, xr, ("frontal", "lateral"), prev, 0.5,
                                       torch.Generator().manual_seed(3))
    torch.testing.assert_close(again[0], total, rtol=0, atol=0)
    # explicit t / noise: the diffusion term equals the hand-computed v MSE
    t, noise = torch.tensor([10, 900]), torch.randn_like(x0)
    _, dif2, _ = diffusion_and_physics_loss(model, sched, x0, xr, None, prev, 0.0, t=t, noise=noise)
    with torch.no_grad():
        v = model(q_sample(x0, t, noise, sched), t, xr, prev)
    torch.testing.assert_close(dif2, (v - v_target(x0, t, noise, sched)).square().mean())
    # ... and the physics term is the DRR of the x0 that the prediction implies from x_t (what sampling sees)
    _, _, phy2 = diffusion_and_physics_loss(model, sched, x0, xr, None, prev, 1.0, t=t, noise=noise)
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    x0_hat = (abar.sqrt() * q_sample(x0, t, noise, sched) - (1 - abar).sqrt() * v).float()
    torch.testing.assert_close(phy2, physics_loss(x0_hat, xr, ("frontal", "lateral")))
    total.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="views"):
        diffusion_and_physics_loss(model, sched, x0, xr, ("lateral", "frontal"), prev, 1.0)


def test_few_steps_of_training_reduce_the_loss(sched):
    torch.manual_seed(0)
    model = _tiny(8, views=1, xray_size=16)
    x0 = torch.rand(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    xr = drr_views(x0, ("frontal",), out_size=16)
    t, noise = torch.tensor([200, 600]), torch.randn_like(x0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        total, _, _ = diffusion_and_physics_loss(model, sched, x0, xr, None, None, 1.0,
                                                 t=t, noise=noise)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_sample_stage_and_cascade(sched):
    torch.manual_seed(0)
    stages = [_tiny(S, views=2).eval() for S in (8, 16)]
    xr = torch.rand(2, 2, 32, 32)
    vols = sample_cascade(stages, sched, xr, steps=3, generator=torch.Generator().manual_seed(0))
    assert [v.shape for v in vols] == [(2, 1, 8, 8, 8), (2, 1, 16, 16, 16)]
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in vols)
    one = sample_stage(stages[1], sched, xr, vols[0], steps=3,
                       generator=torch.Generator().manual_seed(0), clip_x0=None)
    assert one.shape == (2, 1, 16, 16, 16)
