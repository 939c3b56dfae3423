"""The DDIM sampler against Song et al. 2021 eq. 12/16, the probability-flow map of Gaussian
data, and its eta = 1 equivalence with DDPM ancestral sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from denoisekit import DenoisekitDeprecationWarning
from denoisekit.denoiser import Denoiser
from denoisekit.plugins.samplers import ddim, ddpm
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

SPEC = ddim.denoisekit_components()[0]


def sampler(**kwargs) -> ddim.DDIMSampler:
    return SPEC.build(ddim.DDIMConfig(**kwargs))


# --------------------------------------------------------------------------- config, steps


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"steps": 0}, "steps"),
        ({"eta": -0.1}, "eta"),
        ({"eta": 1.5}, "eta"),
        ({"spacing": "quadratic"}, "spacing"),
        ({"clip_denoised": 1}, "clip_denoised"),
    ],
)
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=f"'{field}'"):
        ddim.DDIMConfig(**kwargs)


@pytest.mark.parametrize(
    "spacing, expected",
    [  # Lin et al. 2023, table 2 (T = 1000, 10 steps), diffusers' definitions.
        ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
        ("leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
    ],
)
def test_timesteps_per_spacing(spacing, expected):
    smp = sampler(steps=10, spacing=spacing)
    assert smp.timesteps(linear_ab(1000)) == expected
    assert smp.num_evaluations(1000) == 10


@pytest.mark.parametrize("make", [ddim.DDIMConfig, ddpm.DDPMConfig])
def test_timesteps_of_num_timesteps_still_work_with_a_deprecation_warning(make):
    smp = (ddim.DDIMSampler if make is ddim.DDIMConfig else ddpm.DDPMSampler)(make(steps=10))
    with pytest.warns(DenoisekitDeprecationWarning, match="alphas_cumprod"):
        assert smp.timesteps(1000) == smp.timesteps(linear_ab(1000))


def test_more_steps_than_timesteps_rejected():
    smp = sampler(steps=50)
    with pytest.raises(ValueError, match=r"'steps' \(50\) exceeds .* \(20\)"):
        smp.num_evaluations(20)
    den, _ = oracle_denoiser(cos_sched(20), MU, 0.0)
    with pytest.raises(ValueError, match="exceeds"):
        draw(smp, den, (1, 2), torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- oracles


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_point_data_is_recovered_at_any_step_count(prediction, spacing, eta):
    # Data at one point mu: the last step lands on alpha_bar = 1, i.e. on x0^ = mu.
    sched = cos_sched(100)
    den, _ = oracle_denoiser(sched, MU, 0.0, prediction)
    for steps in (1, 2, 7, 50, 100):
        smp = sampler(steps=steps, eta=eta, spacing=spacing, clip_denoised=False)
        out = draw(smp, den, (3, 4), torch.Generator().manual_seed(steps), dtype=torch.float64)
        torch.testing.assert_close(out, torch.full_like(out, MU), rtol=0, atol=1e-9)


@pytest.mark.parametrize("spacing", ["linspace", "trailing", "leading"])
@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_eta0_converges_to_probability_flow_map(spacing, prediction):
    """For N(mu, sigma²) data the probability-flow ODE is affine per coordinate.

    The marginal at t is N(sqrt(ab_t) mu, ab_t sigma² + 1 - ab_t); an increasing affine map
    between two 1-D Gaussians is unique, so the flow from the first sampled timestep t0
    keeps the standardized value: x0 = mu + sigma (x_t0 - sqrt(ab) mu) / sqrt(ab sigma² + 1 - ab).
    DDIM (eta = 0) is a first-order solver of that ODE: the error must fall with the steps.
    """
    sched = cos_sched(1000)
    ab = sched.alphas_cumprod.numpy()
    den, _ = oracle_denoiser(sched, MU, SIGMA, prediction)
    x_T = torch.linspace(-3, 3, 61, dtype=torch.float64).view(1, 1, 61)
    errors = []
    for steps in (10, 100, 1000):
        smp = sampler(steps=steps, spacing=spacing, clip_denoised=False)
        a = ab[smp.timesteps(linear_ab(1000))[0]]
        exact = MU + SIGMA * (x_T - math.sqrt(a) * MU) / math.sqrt(a * SIGMA**2 + 1 - a)
        out = smp.sample(den, x_T, generator=None)
        errors.append((out - exact).abs().max().item())
    assert errors[0] > 4 * errors[1] > 16 * errors[2], errors
    assert errors[2] < 5e-3, errors


def _ddim_output_law(ab, ts, mu, sigma, eta):
    """Exact mean and std of DDIM's output for the Gaussian oracle (eq. 12 and 16 form).

    Each step is x_s = sqrt(ab_s) x0^ + d eps^ + s z with x0^ = A x_t + c and
    eps^ = (x_t - sqrt(ab_t) x0^) / sqrt(1 - ab_t): affine in x_t, so moments propagate.
    """
    m, v = 0.0, 1.0
    for n, t in enumerate(ts):
        a, a_s = ab[t], (ab[ts[n + 1]] if n + 1 < len(ts) else 1.0)
        s2 = eta**2 * (1 - a_s) / (1 - a) * (1 - a / a_s)
        d = math.sqrt(1 - a_s - s2)
        A, c = linear_oracle_coefficients(a, mu, sigma)
        P = math.sqrt(a_s) * A + d * (1 - math.sqrt(a) * A) / math.sqrt(1 - a)
        Q = math.sqrt(a_s) * c - d * math.sqrt(a) * c / math.sqrt(1 - a)
        m, v = P * m + Q, P**2 * v + s2
    return m, math.sqrt(v)


# 30,000 i.i.d. coordinates; under 32,768 elements torch's elementwise ops stay on one thread.
SHAPE = (3, 1, 100, 100)
N = int(np.prod(SHAPE))


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_stochastic_respaced_chain_matches_exact_output_law(eta, spacing):
    sched = cos_sched(1000)
    smp = sampler(steps=25, eta=eta, spacing=spacing, clip_denoised=False)
    mean, std = _ddim_output_law(
        sched.alphas_cumprod.numpy(), smp.timesteps(linear_ab(1000)), MU, SIGMA, eta
    )
    den, _ = oracle_denoiser(sched, MU, SIGMA, "v")
    x = draw(smp, den, SHAPE, torch.Generator().manual_seed(5), dtype=torch.float64)
    tol_mean, tol_std = mean_std_tolerances(std, N)
    assert abs(x.mean().item() - mean) < tol_mean
    assert abs(x.std().item() - std) < tol_std


def test_eta1_full_chain_samples_the_gaussian():
    """Mean and std of N(mu, sigma²) within 5 standard errors (+2 % of sigma on the std for
    the chain's own bias with the posterior variance: 1.3 % at T = 1000 cosine)."""
    sched = cos_sched(1000)
    den, _ = oracle_denoiser(sched, MU, SIGMA, "eps")
    smp = sampler(steps=1000, eta=1.0, clip_denoised=False)
    x = draw(smp, den, SHAPE, torch.Generator().manual_seed(6), dtype=torch.float64)
    tol_mean, tol_std = mean_std_tolerances(SIGMA, N)
    assert abs(x.mean().item() - MU) < tol_mean
    assert abs(x.std().item() - SIGMA) < tol_std + 0.02 * SIGMA


# --------------------------------------------------------------------------- equivalences


class WigglyX0(torch.nn.Module):
    """A nonlinear x0 model: |x0^| <= 1.05 amplitude, so clipping bites only above 1."""

    def __init__(self, amplitude: float) -> None:
        super().__init__()
        self.amplitude = amplitude

    def forward(self, x_t, t):
        shape = (-1, *[1] * (x_t.ndim - 1))
        return self.amplitude * (torch.tanh(x_t) + 0.05 * torch.sin(0.1 * t).view(shape))


@pytest.mark.parametrize("spacing", ["linspace", "trailing", "leading"])
@pytest.mark.parametrize("clip, amplitude", [(False, 0.6), (True, 1.5)])
def test_eta1_equals_ddpm_fixed_small(spacing, clip, amplitude):
    sched = linear.build_linear(linear.LinearScheduleConfig(num_timesteps=100))
    den = Denoiser(WigglyX0(amplitude), sched, "x0")
    out, states = {}, {}
    for name, smp in [
        ("ddim", sampler(steps=20, eta=1.0, spacing=spacing, clip_denoised=clip)),
        ("ddpm", ddpm.DDPMSampler(ddpm.DDPMConfig(steps=20, spacing=spacing, clip_denoised=clip))),
    ]:
        seen = []
        g = torch.Generator().manual_seed(9)
        out[name] = draw(smp, den, (4, 8), g, dtype=torch.float64, callback=seen.append)
        x0_max = max(float(info["x0"].abs().max()) for info in seen)
        assert x0_max == 1.0 if clip else x0_max < 1.0  # clipping active / not needed
        states[name] = [info["x_t"] for info in seen]
    torch.testing.assert_close(out["ddim"], out["ddpm"], rtol=1e-10, atol=1e-10)
    # Every intermediate state too: they are not clamped, so this holds where the final
    # clamp saturates much of the output (with clipping on).
    assert len(states["ddim"]) == len(states["ddpm"]) == 20
    for a, b in zip(states["ddim"], states["ddpm"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert float(out["ddim"].abs().max()) < 1.0 or clip  # not saturated by the final clamp


def test_matches_reference_eq12_with_diffusers_step_rule():
    """Reference loop in the paper's form with diffusers' leading spacing and prev = t - T // n."""
    T, n, eta, shape = 100, 10, 0.3, (2, 3, 4)
    sched = cos_sched(T)
    ab = sched.alphas_cumprod.numpy()
    model = WigglyEps()
    out = draw(
        sampler(steps=n, eta=eta, spacing="leading", clip_denoised=False),
        Denoiser(model, sched, "eps"),
        shape,
        torch.Generator().manual_seed(2),
        dtype=torch.float64,
    )
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    for t in range(T - T // n, -1, -(T // n)):
        prev = t - T // n
        a_t, a_prev = ab[t], (ab[prev] if prev >= 0 else 1.0)
        eps = model(x, torch.full((shape[0],), float(t), dtype=torch.float64))
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # "predicted x0"
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)  # (16)
        direction = math.sqrt(1 - a_prev - sigma**2) * eps  # "direction pointing to x_t"
        x = math.sqrt(a_prev) * x0 + direction
        x = x + sigma * torch.randn(shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(out, x.clamp(-1, 1), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- behaviour


def test_eta0_draws_only_x_T():
    sched = cos_sched(100)
    den, _ = oracle_denoiser(sched, MU, SIGMA)
    g = torch.Generator().manual_seed(0)
    out = draw(sampler(steps=20), den, (2, 5), g)
    ref = torch.Generator().manual_seed(0)
    x_T = torch.randn((2, 5), generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())  # nothing drawn after x_T
    other = torch.Generator().manual_seed(123)
    assert torch.equal(sampler(steps=20).sample(den, x_T, generator=other), out)


def test_callback_reports_each_step():
    sched = cos_sched(100)
    den, model = oracle_denoiser(sched, MU, SIGMA)
    smp = sampler(steps=12, spacing="trailing")
    seen = []
    draw(smp, den, (2, 3), torch.Generator().manual_seed(1), callback=seen.append)
    assert [info["i"] for info in seen] == list(range(12))
    assert [info["t"] for info in seen] == smp.timesteps(linear_ab(100))
    assert model.calls == 12 == den.num_evaluations
    assert all(info["x0"].shape == (2, 3) for info in seen)
