"""Cosine schedule, v-parameterisation identities and the DDIM sampler."""

import math

import pytest
import torch

from hnerv_fast.models.diffusion import (CosineSchedule, cosine_alphas_cumprod, ddim_sample,
                                         ddim_timesteps, eps_from_v, q_sample, sample_timesteps,
                                         v_target, x0_from_v)


def _f(u, T=1000, s=0.008):
    return math.cos(((u / T) + s) / (1 + s) * math.pi / 2) ** 2


@pytest.fixture(scope="module")
def sched():
    return CosineSchedule(1000)


def test_schedule_shapes_and_bounds(sched):
    ac, betas = sched.alphas_cumprod, sched.betas
    assert ac.shape == (1000,) and betas.shape == (1000,)
    assert ac.dtype == torch.float64
    assert torch.all(ac[1:] < ac[:-1]), "alphas_cumprod must be strictly decreasing"
    assert ac[0] > 0.9999 and ac[0] < 1.0
    assert torch.all(betas <= 0.999) and torch.all(betas > 0)
    assert ac[-1] > 0                      # clipping keeps the last step finite
    assert torch.all(torch.isfinite(sched.sqrt_one_minus_alphas_cumprod))


def test_schedule_exact_values(sched):
    ac = sched.alphas_cumprod
    # index t is abar((t+1)/T); unaffected by clipping except at the very end
    assert float(ac[0]) == pytest.approx(_f(1) / _f(0), rel=1e-12)
    assert float(ac[499]) == pytest.approx(_f(500) / _f(0), rel=1e-12)
    assert float(ac[998]) == pytest.approx(_f(999) / _f(0), rel=1e-9)
    # abar(T) = 0 would need beta = 1: it is clipped to 0.999 and abar recomputed from the cumprod
    assert float(sched.betas[-1]) == pytest.approx(0.999, abs=1e-15)
    assert float(ac[-1]) == pytest.approx(float(ac[-2]) * (1 - 0.999), rel=1e-12)
    # alphas_cumprod is exactly the cumprod of the clipped betas
    betas, ac2 = cosine_alphas_cumprod(1000)
    torch.testing.assert_close(ac2, torch.cumprod(1 - betas, 0), rtol=0, atol=0)


def test_schedule_to_device_and_repr(sched):
    s2 = sched.to("cpu")
    assert s2.num_steps == 1000 and torch.equal(s2.alphas_cumprod, sched.alphas_cumprod)
    assert "CosineSchedule" in repr(s2)


def test_identities_float64(sched):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 1, 4, 4, 4, dtype=torch.float64, generator=g)
    eps = torch.randn(x0.shape, dtype=torch.float64, generator=g)
    t = torch.tensor([0, 1, 250, 700, 999])
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    x_t = q_sample(x0, t, eps, sched)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps, rtol=0, atol=1e-6)
    v = v_target(x0, t, eps, sched)
    torch.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(x0_from_v(x_t, t, v, sched), x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(eps_from_v(x_t, t, v, sched), eps, rtol=0, atol=1e-6)
    # method aliases
    torch.testing.assert_close(sched.q_sample(x0, t, eps), x_t, rtol=0, atol=0)
    torch.testing.assert_close(sched.x0_from_v(x_t, t, v), x0, rtol=0, atol=1e-6)
    # rotation property: |x_t|^2 + |v|^2 = |x0|^2 + |eps|^2 pointwise
    torch.testing.assert_close(x_t ** 2 + v ** 2, x0 ** 2 + eps ** 2, rtol=0, atol=1e-9)


def test_dtype_follows_input(sched):
    x0 = torch.randn(2, 1, 2, 2, 2)
    out = q_sample(x0, torch.tensor([3, 4]), torch.randn_like(x0), sched)
    assert out.dtype == torch.float32


def test_bad_timestep_shape(sched):
    x0 = torch.randn(2, 1, 2, 2, 2)
    with pytest.raises(ValueError):
        q_sample(x0, torch.tensor([1, 2, 3]), x0, sched)


def test_sample_timesteps_range(sched):
    t = sample_timesteps(4096, sched, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 999
    assert int(t.max()) > 900 and int(t.min()) < 100
    # every step of [0, T) is drawn, t = 0 (the least noisy) and T - 1 included
    small = sample_timesteps(2000, CosineSchedule(10), generator=torch.Generator().manual_seed(0))
    assert set(small.tolist()) == set(range(10))


def test_ddim_timesteps():
    ts = ddim_timesteps(1000, 10)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 10
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert ddim_timesteps(1000, 1) == [999]
    assert ddim_timesteps(5, 50) == [4, 3, 2, 1, 0]


@pytest.mark.parametrize("steps,eta", [(1, 0.0), (8, 0.0), (25, 0.0), (8, 0.5)])
def test_ddim_with_oracle_v_recovers_x0(sched, steps, eta):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 1, 4, 4, 4, dtype=torch.float64, generator=g)

    def oracle(x_t, t):
        a = sched.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    out = ddim_sample(oracle, x0.shape, steps, sched, generator=g, dtype=torch.float64, eta=eta)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-6)


def test_ddim_steps_follow_the_deterministic_update_with_the_clipped_x0(sched):
    """eta = 0: x_t' = sqrt(abar_t') x0 + sqrt(1 - abar_t') eps with x0 the clamped estimate and
    eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t), the noise that x0 implies for x_t. (The oracle test above
    cannot see a wrong step: its model names the true x0 from any x_t.)"""
    seen = []

    def model(x_t, t):  # x0 estimates often outside [-1, 1]: clipping matters
        seen.append((x_t.clone(), int(t[0])))
        return 0.7 * x_t + 0.3

    x_T = 2 * torch.randn(2, 1, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ddim_sample(model, x_T.shape, 6, sched, dtype=torch.float64, x_T=x_T, clip_x0=(-1.0, 1.0))
    abar = sched.alphas_cumprod
    clipped = 0
    for (x, t), (x_next, t_next) in zip(seen, seen[1:]):
        x0 = abar[t].sqrt() * x - (1 - abar[t]).sqrt() * (0.7 * x + 0.3)
        x0c = x0.clamp(-1.0, 1.0)
        clipped += int(not torch.equal(x0c, x0))
        eps = (x - abar[t].sqrt() * x0c) / (1 - abar[t]).sqrt()
        want = abar[t_next].sqrt() * x0c + (1 - abar[t_next]).sqrt() * eps
        torch.testing.assert_close(x_next, want, rtol=0, atol=1e-9)
    assert len(seen) == 6 and clipped, clipped


def test_ddim_deterministic_and_cond_passed(sched):
    seen = {}

    def model(x_t, t, scale):
        seen["scale"] = scale
        return scale * x_t

    out1 = ddim_sample(model, (2, 1, 3, 3, 3), 5, sched,
                       generator=torch.Generator().manual_seed(7), scale=0.3)
    out2 = ddim_sample(model, (2, 1, 3, 3, 3), 5, sched,
                       generator=torch.Generator().manual_seed(7), scale=0.3)
    out3 = ddim_sample(model, (2, 1, 3, 3, 3), 5, sched,
                       generator=torch.Generator().manual_seed(8), scale=0.3)
    assert seen["scale"] == 0.3
    assert torch.equal(out1, out2) and not torch.equal(out1, out3)
    clipped = ddim_sample(model, (2, 1, 3, 3, 3), 5, sched,
                          generator=torch.Generator().manual_seed(7), scale=0.3, clip_x0=(0, 1))
    assert float(clipped.min()) >= 0 and float(clipped.max()) <= 1
