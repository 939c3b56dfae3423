"""DPM-Solver++(2M) against the closed-form probability-flow map of Gaussian data.

For data ``N(mu, s²)`` the flow keeps the standardized value ``z = (x_t - sqrt(ab_t) mu) /
sqrt(ab_t s² + 1 - ab_t)``; the sampler evaluates the network down to timestep 0 and
returns ``E[x0 | x_0]`` there, so its limit is the exact flow from ``T - 1`` to timestep 0
followed by the exact denoiser (an independent derivation: no sampler code is reused).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from denoisekit.diffusion import DiscreteSchedule
from denoisekit.plugins.samplers.ddim import DDIMConfig, DDIMSampler
from denoisekit.plugins.samplers.dpmpp_2m import DPMSolverConfig, DPMSolverSampler
from tests.plugins.sampler_oracles import (
    MU,
    SIGMA,
    cos_sched,
    linear_oracle_coefficients,
    oracle_denoiser,
)

X_T = torch.linspace(-3, 3, 61, dtype=torch.float64).view(1, 1, 61)


def linear_sched(T: int = 1000) -> DiscreteSchedule:
    return DiscreteSchedule.from_betas(torch.linspace(1e-4, 0.02, T, dtype=torch.float64))


def flow_then_denoise(ab: np.ndarray) -> torch.Tensor:
    """Exact flow of ``X_T`` from timestep ``T - 1`` to 0, then ``E[x0 | x]`` at 0."""
    start, end = ab[-1], ab[0]
    z = (X_T - math.sqrt(start) * MU) / math.sqrt(start * SIGMA**2 + 1 - start)
    at_zero = math.sqrt(end) * MU + math.sqrt(end * SIGMA**2 + 1 - end) * z
    A, c = linear_oracle_coefficients(end, MU, SIGMA)
    return A * at_zero + c


def dpm_error(sched: DiscreteSchedule, steps: int, **options) -> float:
    den, model = oracle_denoiser(sched, MU, SIGMA, options.pop("prediction", "eps"))
    sampler = DPMSolverSampler(DPMSolverConfig(steps=steps, clip_denoised=False, **options))
    out = sampler.sample(den, X_T)
    assert model.calls == steps == sampler.num_evaluations(len(sched.alphas_cumprod))
    return (out - flow_then_denoise(sched.alphas_cumprod.numpy())).abs().max().item()


@pytest.mark.parametrize("sched", [cos_sched(1000), linear_sched()], ids=["cosine", "linear"])
def test_second_order_convergence_to_the_flow_map(sched):
    errors = [dpm_error(sched, n, lower_order_final=False) for n in (20, 40, 80)]
    orders = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    assert all(1.6 < p < 2.6 for p in orders), (errors, orders)


@pytest.mark.parametrize("sched", [cos_sched(1000), linear_sched()], ids=["cosine", "linear"])
def test_twenty_steps_beat_ddim_by_far(sched):
    ab = sched.alphas_cumprod.numpy()
    den, _ = oracle_denoiser(sched, MU, SIGMA)
    ddim = DDIMSampler(DDIMConfig(steps=20, spacing="linspace", clip_denoised=False))
    out = ddim.sample(den, X_T, generator=None)
    exact = MU + SIGMA * (X_T - math.sqrt(ab[-1]) * MU) / math.sqrt(ab[-1] * SIGMA**2 + 1 - ab[-1])
    ddim_error = (out - exact).abs().max().item()
    for lower_order_final in (True, False):
        assert dpm_error(sched, 20, lower_order_final=lower_order_final) < ddim_error / 5


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_the_same_solution_whatever_the_backbone_predicts(prediction):
    sched = cos_sched(1000)
    assert dpm_error(sched, 20, prediction=prediction) == pytest.approx(
        dpm_error(sched, 20), abs=1e-9
    )


@pytest.mark.parametrize("spacing", ["logsnr", "linspace"])
@pytest.mark.parametrize("steps", [2, 3, 20, 999, 1000])
def test_timesteps_run_from_the_noisiest_to_zero_strictly_decreasing(spacing, steps):
    ab = cos_sched(1000).alphas_cumprod.numpy()
    ts = DPMSolverSampler(DPMSolverConfig(steps=steps, spacing=spacing)).timesteps(ab)
    assert len(ts) == steps and ts[0] == 999 and ts[-1] == 0
    assert all(a > b for a, b in itertools.pairwise(ts))


def test_logsnr_grid_is_uniform_in_lambda_inside_the_clipped_range():
    ab = linear_sched().alphas_cumprod.numpy()
    ts = DPMSolverSampler(DPMSolverConfig(steps=10)).timesteps(ab)
    lam = 0.5 * np.log(ab / (1 - ab))
    gaps = np.diff(lam[ts])
    assert gaps.max() - gaps.min() < 0.1 * gaps.mean(), gaps
