"""Timestep spacings: which timesteps of a schedule a sampler visits, one vocabulary for all.

* ``leading``, ``trailing``, ``linspace``: integer timesteps by a rule on ``T`` alone, as
  diffusers defines them (``DDIMScheduler.set_timesteps``, ``steps_offset = 0``; Lin et al.
  2023, table 2).
* ``logsnr``: noise levels uniform in ``lambda = log(alpha / sigma)`` (half the log-SNR;
  DPM-Solver, Lu et al. 2022), from ``max(lambda_{T-1}, lambda_min)`` to ``lambda_0``.
* ``karras``: the noise levels of Karras et al. 2022 (EDM) eq. 5,
  ``sigma_i = (sigma_max^(1/rho) + i/(K-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
  with ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` between the schedule's ends.

The last two place noise levels: each level is the fractional timestep where the schedule,
interpolated linearly in log-SNR between neighbouring steps (as
:func:`denoisekit.diffusion.coefficient_at` and ``Denoiser.predict`` do), has that level.
``continuous=True`` returns those timesteps as they are; otherwise each goes to the nearest
step (nearest in log-SNR) and collisions are moved apart, so that ``steps`` distinct integer
timesteps remain. Both start at ``T - 1``, where the sampler's starting noise ``x_T`` is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from denoisekit.deprecation import warn

#: The timestep spacings, by name (see the module docstring).
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace", "logsnr", "karras")
#: The spacings that place noise levels (fractional timesteps unless snapped).
LEVEL_SPACINGS: tuple[str, ...] = ("logsnr", "karras")


def spaced_timesteps(
    alphas_cumprod: Any,
    steps: int,
    spacing: str = "linspace",
    *,
    continuous: bool = False,
    rho: float = 7.0,
    lambda_min: float | None = None,
) -> list[int] | list[float]:
    """``steps`` distinct timesteps of the schedule ``alphas_cumprod`` (its ``(T,)`` alpha_bar
    table: a tensor, array or sequence), noisiest first; ``steps == T`` with ``linspace``
    gives the full chain.

    Args:
        spacing: one of :data:`SPACINGS`.
        continuous: ``logsnr``/``karras`` only: return fractional timesteps (floats), not
            the nearest steps (ints).
        rho: ``karras``'s exponent (EDM: 7).
        lambda_min: ``logsnr``'s lowest ``lambda`` (None: the schedule's; diffusers'
            ``lambda_min_clipped``, e.g. -5.1, keeps steps off a cosine schedule's clipped end).

    Raises:
        ValueError: ``steps`` outside ``[1, T]`` or an unknown spacing.
    """
    if isinstance(alphas_cumprod, int):  # 0.1's spaced_timesteps(num_timesteps, ...)
        warn(
            "spaced_timesteps(num_timesteps, ...)",
            "pass the schedule's alphas_cumprod table, spaced_timesteps(alphas_cumprod, ...)",
        )
        if spacing in LEVEL_SPACINGS:
            raise ValueError(f"spacing {spacing!r} needs the schedule's alphas_cumprod")
        T, alpha_bar = alphas_cumprod, None
    else:
        values = alphas_cumprod
        if isinstance(values, Sequence):
            values = [float(a) for a in values]
        alpha_bar = np.asarray(values, dtype=np.float64).reshape(-1)
        T = len(alpha_bar)
    n = int(steps)
    if n < 1:
        raise ValueError(f"'steps' must be > 0: {n}")
    if n > T:
        raise ValueError(
            f"'steps' ({n}) exceeds the schedule's number of timesteps ({T}); use steps <= {T}"
        )
    if spacing == "linspace":  # Improved DDPM's section 4 rule: includes T - 1 and 0
        ts = np.linspace(0, T - 1, n).round()
    elif spacing == "leading":  # may stay well below T - 1
        ts = np.arange(0, n) * (T // n)
    elif spacing == "trailing":  # starts at T - 1; diffusers' round(arange(T, 0, -T/n)) - 1
        ts = np.round(T - np.arange(n) * (T / n)) - 1
    elif spacing in LEVEL_SPACINGS and alpha_bar is not None:
        levels = level_timesteps(alpha_bar, n, spacing, rho=rho, lambda_min=lambda_min)
        return [float(t) for t in levels] if continuous else snap(levels)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    out = sorted({int(t) for t in ts}, reverse=True)
    if len(out) != n:  # cannot happen for n <= T; kept as a guard against silent duplicates
        raise ValueError(f"spacing {spacing!r} gave duplicate timesteps for T={T}, steps={n}")
    return out


def level_timesteps(
    alpha_bar: np.ndarray,
    steps: int,
    spacing: str,
    *,
    rho: float = 7.0,
    lambda_min: float | None = None,
) -> np.ndarray:
    """The fractional timesteps ``(steps,)`` of a level spacing (``logsnr``, ``karras``),
    decreasing from ``T - 1``; see the module docstring."""
    log_snr = np.log(alpha_bar) - np.log1p(-alpha_bar)  # decreasing in t
    T = len(alpha_bar)
    if spacing == "logsnr":
        lo = log_snr[-1] if lambda_min is None else max(log_snr[-1], 2.0 * lambda_min)
        target = np.linspace(lo, log_snr[0], steps)
    else:  # karras: sigma = exp(-log_snr / 2), EDM eq. 5 between sigma_max and sigma_min
        s_max, s_min = np.exp(-0.5 * log_snr[-1]), np.exp(-0.5 * log_snr[0])
        ramp = np.linspace(0.0, 1.0, steps)
        sigma = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        target = -2.0 * np.log(sigma)
    # The inverse of the piecewise-linear log-SNR: np.interp needs increasing abscissae.
    ts = np.interp(-target, -log_snr, np.arange(T, dtype=np.float64))
    ts[0] = T - 1  # where x_T is
    return ts


def snap(levels: np.ndarray) -> list[int]:
    """Fractional timesteps (decreasing, from ``T - 1``) to as many distinct integer ones:
    each to the nearest step, then moved down (or, near 0, up) where it collides."""
    steps = len(levels)
    out = [round(float(levels[0]))]
    for i, t in enumerate(levels[1:], start=1):  # strictly decreasing, room left for the rest
        out.append(int(min(max(round(float(t)), steps - 1 - i), out[-1] - 1)))
    return out
