"""The DDPM ancestral sampler against Ho et al. 2020 algorithm 2 and exact Gaussian oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from denoisekit.denoiser import Denoiser
from denoisekit.diffusion import DiscreteSchedule
from denoisekit.plugins.samplers import ddpm
from denoisekit.plugins.schedules import linear
from tests.plugins.sampler_oracles import (
    MU,
    SIGMA,
    WigglyEps,
    cos_sched,
    draw,
    linear_ab,
    linear_oracle_coefficients,
    mean_std_tolerances,
    oracle_denoiser,
)

SPEC = ddpm.denoisekit_components()[0]


def sampler(**kwargs) -> ddpm.DDPMSampler:
    return SPEC.build(ddpm.DDPMConfig(**kwargs))


def lin_sched(T: int) -> DiscreteSchedule:
    return linear.build_linear(linear.LinearScheduleConfig(num_timesteps=T))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"steps": 0}, "steps"),
        ({"steps": -3}, "steps"),
        ({"variance": "learned"}, "variance"),
        ({"spacing": "uniform"}, "spacing"),
        ({"clip_denoised": "yes"}, "clip_denoised"),
    ],
)
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=f"'{field}'"):
        ddpm.DDPMConfig(**kwargs)


def test_num_evaluations_and_timesteps():
    assert sampler().num_evaluations(1000) == 1000
    assert sampler().timesteps(linear_ab(5)) == [4, 3, 2, 1, 0]
    assert sampler(steps=10).num_evaluations(1000) == 10
    # Improved DDPM section 4: evenly strided over [0, T - 1], rounded.
    assert sampler(steps=10).timesteps(linear_ab(1000)) == [
        999,
        888,
        777,
        666,
        555,
        444,
        333,
        222,
        111,
        0,
    ]
    assert sampler(steps=10, spacing="trailing").timesteps(linear_ab(1000))[0] == 999
    with pytest.raises(ValueError, match="exceeds"):
        sampler(steps=11).num_evaluations(10)


def test_steps_beyond_schedule_rejected_at_sample_time():
    den, _ = oracle_denoiser(cos_sched(10), MU, 0.0)
    with pytest.raises(ValueError, match="exceeds"):
        draw(sampler(steps=11), den, (1, 1), torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- algorithm 2


@pytest.mark.parametrize("make_sched", [cos_sched, lin_sched])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_full_chain_is_ho_algorithm_2(make_sched, variance):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t) + sigma_t z (paper form)."""
    T, shape = 60, (3, 2, 5)
    sched = make_sched(T)
    ab = sched.alphas_cumprod.numpy()
    out = draw(
        sampler(variance=variance, clip_denoised=False),
        Denoiser(WigglyEps(), sched, "eps"),
        shape,
        torch.Generator().manual_seed(3),
        dtype=torch.float64,
    )

    g = torch.Generator().manual_seed(3)
    model = WigglyEps()
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    for t in range(T - 1, -1, -1):  # index t is the paper's t + 1
        ab_prev = ab[t - 1] if t > 0 else 1.0
        alpha = ab[t] / ab_prev
        beta = 1 - alpha
        var = beta * (1 - ab_prev) / (1 - ab[t]) if variance == "fixed_small" else beta
        eps = model(x, torch.full((shape[0],), float(t), dtype=torch.float64))
        x = (x - beta / math.sqrt(1 - ab[t]) * eps) / math.sqrt(alpha)
        if t > 0:
            x = x + math.sqrt(var) * torch.randn(shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(out, x.clamp(-1, 1), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- oracles


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("steps", [None, 1, 7])
def test_point_data_is_recovered_exactly(prediction, variance, steps):
    # Data at one point mu: the last step's posterior mean is x0 = mu and adds no noise.
    sched = cos_sched(100)
    den, model = oracle_denoiser(sched, MU, 0.0, prediction)
    smp = sampler(steps=steps, variance=variance, clip_denoised=False)
    out = draw(smp, den, (4, 3), torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(out, torch.full_like(out, MU), rtol=0, atol=1e-9)
    assert model.calls == (steps or 100) == den.num_evaluations


def _output_law(ab, ts, mu, sigma, variance):
    """Exact mean and std of the chain's output for the Gaussian oracle (DDPM eq. 7 form).

    Every step is affine-Gaussian: x_{t-1} = c1 E[x0|x_t] + c2 x_t + s z with E[x0|x_t] =
    A x_t + c, so the mean and the variance propagate exactly from x_T ~ N(0, 1).
    """
    m, v = 0.0, 1.0
    for n, t in enumerate(ts):
        a, ap = ab[t], (ab[ts[n + 1]] if n + 1 < len(ts) else 1.0)
        beta = 1 - a / ap
        A, c = linear_oracle_coefficients(a, mu, sigma)
        c1, c2 = math.sqrt(ap) * beta / (1 - a), math.sqrt(1 - beta) * (1 - ap) / (1 - a)
        step_var = 0.0
        if n + 1 < len(ts):
            step_var = beta * (1 - ap) / (1 - a) if variance == "fixed_small" else beta
        m, v = c1 * (A * m + c) + c2 * m, (c1 * A + c2) ** 2 * v + step_var
    return m, math.sqrt(v)


# 30,000 i.i.d. coordinates (the oracle is elementwise); under 32,768 elements torch runs
# elementwise ops on one thread, which keeps this fast on a busy machine.
SHAPE = (3, 1, 100, 100)
N = int(np.prod(SHAPE))


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_full_chain_samples_the_gaussian(variance):
    """Samples of N(mu, sigma²) data: mean and std within 5 standard errors.

    The std also gets 2 % of sigma for the chain's own bias: fixed variances are not the
    exact reverse conditionals (the exact output law, computed as in
    test_respaced_chain_matches_exact_output_law, is 1.3 % narrow for fixed_small and
    0.3 % wide for fixed_large at T = 1000 cosine).
    """
    sched = cos_sched(1000)
    den, _ = oracle_denoiser(sched, MU, SIGMA, "eps")
    smp = sampler(variance=variance, clip_denoised=False)
    x = draw(smp, den, SHAPE, torch.Generator().manual_seed(1), dtype=torch.float64)
    tol_mean, tol_std = mean_std_tolerances(SIGMA, N)
    assert abs(x.mean().item() - MU) < tol_mean
    assert abs(x.std().item() - SIGMA) < tol_std + 0.02 * SIGMA


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_respaced_chain_matches_exact_output_law(variance, prediction):
    # 25 respaced steps: the two variance choices give output stds 27 % apart, so this
    # also tells them (and a wrong respacing) apart.
    sched = cos_sched(1000)
    smp = sampler(steps=25, variance=variance, clip_denoised=False)
    mean, std = _output_law(
        sched.alphas_cumprod.numpy(), smp.timesteps(linear_ab(1000)), MU, SIGMA, variance
    )
    den, _ = oracle_denoiser(sched, MU, SIGMA, prediction)
    x = draw(smp, den, SHAPE, torch.Generator().manual_seed(2), dtype=torch.float64)
    tol_mean, tol_std = mean_std_tolerances(std, N)
    assert abs(x.mean().item() - mean) < tol_mean
    assert abs(x.std().item() - std) < tol_std
    # Sanity of the law itself: far from the data's std with so few steps.
    assert abs(std - SIGMA) > 0.05 * SIGMA


# --------------------------------------------------------------------------- behaviour


def test_clip_denoised_clips_x0_estimates():
    sched = cos_sched(50)
    den, _ = oracle_denoiser(sched, 3.0, 0.0, "x0")  # the model insists on x0 = 3
    for clip in (True, False):
        seen = []
        smp = sampler(steps=10, clip_denoised=clip)
        out = draw(smp, den, (2, 3), torch.Generator().manual_seed(0), callback=seen.append)
        x0_max = max(float(info["x0"].max()) for info in seen)
        assert x0_max == (1.0 if clip else pytest.approx(3.0))
        assert float(out.max()) <= 1.0 and float(out.min()) >= -1.0


def test_callback_and_given_x_T():
    sched = cos_sched(50)
    den, _ = oracle_denoiser(sched, MU, SIGMA)
    smp = sampler(steps=8)
    seen = []
    out = draw(smp, den, (2, 3), torch.Generator().manual_seed(4), callback=seen.append)
    assert [info["i"] for info in seen] == list(range(8))
    assert [info["t"] for info in seen] == smp.timesteps(linear_ab(50))
    # Passing x_T = the first draw and the generator after it reproduces the run exactly.
    g = torch.Generator().manual_seed(4)
    x_T = torch.randn((2, 3), generator=g)
    assert torch.equal(seen[0]["x_t"], x_T)
    assert torch.equal(smp.sample(den, x_T, generator=g), out)
