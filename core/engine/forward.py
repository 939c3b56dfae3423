"""The forward process on a schedule: ``q_sample``, which the training loop draws ``x_t``
from, and its posterior q(x_{t-1} | x_t, x0) (what the schedule's ``posterior_*`` tables
hold, written out; samplers and the NLL read the tables). Notation: :mod:`denoisekit.diffusion`.
"""

from __future__ import annotations

import torch

from denoisekit.diffusion import DiscreteSchedule, coefficient


def q_sample(
    schedule: DiscreteSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x0): ``sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` (DDPM eq. 4),
    for clean data ``x0`` ``(B, ...)``, integer timesteps ``t`` ``(B,)`` and ``noise`` (eps)."""
    tab = schedule.tables(x0.device, x0.dtype)
    return (
        coefficient(tab.sqrt_alpha_bar, t, x0.ndim) * x0
        + coefficient(tab.sqrt_one_minus_alpha_bar, t, x0.ndim) * noise
    )


def q_posterior(
    schedule: DiscreteSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x0) (DDPM eq. 6-7).

    Returns:
        ``(mean, variance, log_variance_clipped)``: ``mean`` has ``x_t``'s shape; the
        variances have shape ``(B, 1, ..., 1)`` (broadcastable). At ``t = 0`` the variance
        is 0 and the log-variance is clipped to its value at ``t = 1``.
    """
    tab = schedule.tables(x_t.device, x_t.dtype)
    n = x_t.ndim
    mean = (
        coefficient(tab.posterior_mean_coef1, t, n) * x0
        + coefficient(tab.posterior_mean_coef2, t, n) * x_t
    )
    return (
        mean,
        coefficient(tab.posterior_variance, t, n),
        coefficient(tab.posterior_log_variance_clipped, t, n),
    )
