"""Exact denoisers for sampler tests (not a test module).

For data ``x0 ~ N(mu, sigma² I)`` and ``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps``, the pair
(x0, x_t) is jointly Gaussian per coordinate, so the MMSE denoiser is linear:

    E[x0 | x_t] = mu + sqrt(ab) sigma² / (ab sigma² + 1 - ab) · (x_t - sqrt(ab) mu).

``sigma = 0`` is data concentrated at the point ``mu`` (then E[x0 | x_t] = mu).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from denoisekit.denoiser import Denoiser
from denoisekit.diffusion import DiscreteSchedule, randn
from denoisekit.plugins.schedules import cosine

MU, SIGMA = 0.2, 0.15  # data far inside [-1, 1]: 5 sigma from either end


class GaussianOracle(torch.nn.Module):
    """Backbone answering the exact eps, x0 or v of N(mu, sigma²) data at timestep t."""

    def __init__(self, alphas_cumprod: np.ndarray, mu: float, sigma: float, prediction: str):
        super().__init__()
        self.ab = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64))
        self.mu, self.sigma, self.prediction = mu, sigma, prediction
        self.calls = 0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        ab = self.alpha_bar(t).to(x_t.dtype).view(-1, *[1] * (x_t.ndim - 1))
        mu, var = self.mu, self.sigma**2
        x0 = mu + ab.sqrt() * var / (ab * var + 1 - ab) * (x_t - ab.sqrt() * mu)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
        return {"eps": eps, "x0": x0, "v": v}[self.prediction]

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at timesteps ``t`` (float64): the table at steps; between steps, the
        log-SNR ``log(ab / (1 - ab))`` linear between the neighbouring steps."""
        t = t.to(torch.float64)
        lo = t.floor().long().clamp(0, len(self.ab) - 1)
        hi = (lo + 1).clamp(max=len(self.ab) - 1)
        log_snr = (self.ab / (1 - self.ab)).log()
        lam = log_snr[lo] + (t - lo) * (log_snr[hi] - log_snr[lo])
        return torch.where(t == lo, self.ab[lo], 1 / (1 + torch.exp(-lam)))


def linear_oracle_coefficients(ab: float, mu: float, sigma: float) -> tuple[float, float]:
    """(A, c) with E[x0 | x_t] = A x_t + c."""
    A = math.sqrt(ab) * sigma**2 / (ab * sigma**2 + 1 - ab)
    return A, mu - A * math.sqrt(ab) * mu


def mean_std_tolerances(sigma: float, n: int, z: float = 5.0) -> tuple[float, float]:
    """z standard errors of the sample mean and of the sample std of n Gaussian draws.

    sd(mean) = sigma / sqrt(n); sd(std) ≈ sigma / sqrt(2 (n - 1)).
    """
    return z * sigma / math.sqrt(n), z * sigma / math.sqrt(2 * (n - 1))


def cos_sched(T: int) -> DiscreteSchedule:
    """The cosine schedule with ``T`` steps."""
    return cosine.build_cosine(cosine.CosineScheduleConfig(num_timesteps=T))


def oracle_denoiser(sched, mu, sigma, prediction="eps"):
    """``(Denoiser, model)`` over the exact :class:`GaussianOracle` of ``N(mu, sigma²)``."""
    model = GaussianOracle(sched.alphas_cumprod.numpy(), mu, sigma, prediction)
    return Denoiser(model, sched, prediction), model


class WigglyEps(torch.nn.Module):
    """A nonlinear eps model, so that equivalence checks do not hinge on linearity."""

    def forward(self, x_t, t):
        return 0.8 * torch.tanh(x_t) + 0.05 * torch.sin(0.1 * t).view(-1, *[1] * (x_t.ndim - 1))


def draw(sampler, denoiser, shape, generator, *, dtype=torch.float32, **kwargs):
    """Sample as the host does: ``x_T`` drawn from ``generator`` (per image with a list),
    which then draws the sampler's own noise."""
    x_T = randn(shape, generator, dtype=dtype)
    return sampler.sample(denoiser, x_T, generator=generator, **kwargs)


def linear_ab(T: int) -> torch.Tensor:
    """alpha_bar of DDPM's linear betas (1e-4 .. 0.02) over ``T`` steps: a schedule table
    for a sampler's ``timesteps(alphas_cumprod)``."""
    return DiscreteSchedule.from_betas(torch.linspace(1e-4, 0.02, T)).alphas_cumprod
