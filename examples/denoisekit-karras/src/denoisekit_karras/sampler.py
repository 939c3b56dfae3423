"""Euler and Heun steps on the probability-flow ODE (Karras et al. 2022, "EDM").

Samplers ``euler`` (EDM Algorithm 2 without churn, i.e. Euler steps) and ``heun`` (EDM
Algorithm 1: Heun's 2nd-order method, with an Euler step to sigma = 0 at the end), for
models trained on a discrete variance-preserving schedule. They see the model only through
:meth:`denoisekit.Denoiser.predict`, so they work with any backbone and prediction type.

*Notation*: ``alpha_bar_t`` is the schedule's cumulative product at timestep ``t``;
``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` is its noise level in the
variance-exploding form, where the state is ``x = x_t / sqrt(alpha_bar_t)`` so that
``x = x0 + sigma eps`` (EDM section 2 with ``s(t) = 1 / sqrt(1 + sigma²)``). The
probability-flow ODE (EDM eq. 1 with ``sigma(t) = t``) is

    dx / dsigma = (x - D(x; sigma)) / sigma = eps^(x; sigma),

with ``D`` the x0 estimate; ``eps^`` is exactly the denoiser's noise estimate at the VP
state ``x_t = sqrt(alpha_bar_t) x``. The sampler steps through the noise levels
``sigma_{t_0} > ... > sigma_{t_{N-1}} > sigma_N = 0`` of chosen timesteps: with
``spacing = "karras"`` exactly the levels of EDM eq. 5,
``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``,
at fractional timesteps (``logsnr``: levels uniform in log-SNR), where the denoiser
interpolates the schedule in log-SNR (no snapping to integer steps); or the ``linspace`` /
``leading`` / ``trailing`` integer timesteps. All from
:func:`denoisekit.diffusion.spaced_timesteps`.
The start ``x_T ~ N(0, I)`` is the VP prior, i.e. ``x = x_T / sqrt(alpha_bar_{t_0})``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import torch
from denoisekit import (
    CheckContext,
    ComponentSpec,
    DenoiserLike,
    Problem,
    diffusion,
    int_at_least,
    option,
    positive_finite,
)
from denoisekit.denoiser import clip_to_range


@attrs.frozen(kw_only=True)
class EulerConfig:
    """Options of the ``euler`` sampler."""

    steps: int = option(
        50, "noise levels visited (network evaluations = steps)", validator=int_at_least(1)
    )
    spacing: str = option(
        "karras",
        "timesteps: karras (EDM eq. 5 rho-spacing of sigmas), logsnr, linspace, leading, trailing",
        validator=attrs.validators.in_(diffusion.SPACINGS),
    )
    rho: float = option(7.0, "exponent of the karras spacing (EDM: 7)", validator=positive_finite)
    clip_denoised: bool = option(
        False,
        "clip each x0 estimate to [-1, 1] (not in EDM; can help undertrained models)",
        validator=attrs.validators.instance_of(bool),
    )


@attrs.frozen(kw_only=True)
class HeunConfig:
    """Options of the ``heun`` sampler."""

    steps: int = option(
        18,
        "noise levels visited (network evaluations = 2 steps - 1; EDM CIFAR-10: 18)",
        validator=int_at_least(1),
    )
    spacing: str = option(
        "karras",
        "timesteps: karras (EDM eq. 5 rho-spacing of sigmas), logsnr, linspace, leading, trailing",
        validator=attrs.validators.in_(diffusion.SPACINGS),
    )
    rho: float = option(7.0, "exponent of the karras spacing (EDM: 7)", validator=positive_finite)
    clip_denoised: bool = option(
        False,
        "clip each x0 estimate to [-1, 1] (not in EDM; can help undertrained models)",
        validator=attrs.validators.instance_of(bool),
    )


def sigmas_of(alphas_cumprod: Sequence[float]) -> list[float]:
    """``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` for every timestep, as floats."""
    return [math.sqrt((1.0 - ab) / ab) for ab in alphas_cumprod]


def _check_steps(steps: int, num_timesteps: int) -> None:
    if not 1 <= steps <= num_timesteps:
        raise ValueError(
            f"'steps' ({steps}) must be in [1, {num_timesteps}] (the schedule's timesteps)"
        )


class KarrasSampler:
    """Steps on the probability-flow ODE of order :attr:`order`: 1 Euler, 2 Heun.

    Register a subclass (:class:`EulerSampler`, :class:`HeunSampler`); see the module
    docstring.
    """

    order: int = 1

    def __init__(self, config: EulerConfig | HeunConfig) -> None:
        self.config = config

    def timesteps(self, alphas_cumprod: Any) -> list[int] | list[float]:
        """The ``steps`` timesteps visited on the schedule ``alphas_cumprod`` (its alpha_bar
        table), noisiest first: fractional for ``karras`` and ``logsnr``.

        Raises:
            ValueError: when ``steps`` exceeds the schedule's number of timesteps.
        """
        c = self.config
        return diffusion.spaced_timesteps(
            alphas_cumprod, c.steps, c.spacing, continuous=True, rho=c.rho
        )

    def num_evaluations(self, num_timesteps: int) -> int:
        """Network evaluations per call: ``steps`` (Euler) or ``2 steps - 1`` (Heun).

        Raises:
            ValueError: when ``steps`` exceeds ``num_timesteps``.
        """
        n = self.config.steps
        _check_steps(n, num_timesteps)
        return n if self.order == 1 else 2 * n - 1

    @torch.no_grad()
    def sample(
        self,
        denoiser: DenoiserLike,
        x_T: torch.Tensor,
        *,
        generator: torch.Generator | Sequence[torch.Generator] | None,
        cond: torch.Tensor | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> torch.Tensor:
        """Integrate the probability-flow ODE from sigma_max to 0, starting at ``x_T``.

        Args:
            denoiser: gives ``(eps, x0)`` at any timestep, fractional ones included
                (:class:`denoisekit.Denoiser`).
            x_T: the starting noise in the VP form (``N(0, I)``, ``(B, ...)``; not modified).
            generator: unused: the ODE is deterministic.
            cond: conditioning passed to the denoiser.
            callback: called after each step's first evaluation with ``{"i", "t",
                "sigma", "x_t" (the VP state), "x0"}``.

        Returns:
            Samples of ``x_T``'s shape, dtype and device, clamped to the denoiser's
            ``data_range`` ([-1, 1]; latents: not clamped).
        """
        schedule = denoiser.schedule
        steps = diffusion.sampling_steps(schedule, self.timesteps(schedule.alphas_cumprod), x_T)
        # Step tables: python floats (kernel scalars: no per-step device tensors or syncs);
        # alpha_bar at a fractional timestep is the denoiser's (log-SNR interpolation).
        sigmas = [*sigmas_of(steps.alpha_bar), 0.0]
        scale = [math.sqrt(ab) for ab in steps.alpha_bar]  # x_t = sqrt(alpha_bar_t) x
        x = x_T / scale[0]  # the VE state

        def slope(x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """``d = (x - D(x; sigma_i)) / sigma_i``, with ``x_t`` and ``D`` (EDM eq. 3)."""
            x_t = scale[i] * x
            eps, x0 = denoiser.predict(x_t, steps.t[i], cond)
            if self.config.clip_denoised:
                x0 = clip_to_range(x0, denoiser)
                eps = (x - x0) / sigmas[i]
            return eps, x_t, x0

        for i, t in enumerate(steps.timesteps):
            d, x_t, x0 = slope(x, i)
            if callback is not None:
                callback({"i": i, "t": t, "sigma": sigmas[i], "x_t": x_t, "x0": x0})
            h = sigmas[i + 1] - sigmas[i]
            x_next = x + h * d  # Euler step (Algorithm 1, line 5)
            if self.order == 2 and sigmas[i + 1] > 0.0:
                # Heun's correction (Algorithm 1, lines 7-8): average the slopes at both ends.
                d_next, _, _ = slope(x_next, i + 1)
                x_next = x + h * (0.5 * d + 0.5 * d_next)
            x = x_next
        return clip_to_range(x, denoiser)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class EulerSampler(KarrasSampler):
    """Euler steps (EDM Algorithm 2 without churn)."""

    order = 1


class HeunSampler(KarrasSampler):
    """Heun's 2nd-order steps (EDM Algorithm 1)."""

    order = 2


def check_steps(config: EulerConfig | HeunConfig, context: CheckContext) -> Iterator[Problem]:
    """When the recipe is loaded: ``steps`` must not exceed the schedule's timesteps."""
    T = context.fact("schedule", "num_timesteps")  # None: a schedule that does not say
    if T is not None and config.steps > T:
        yield (
            "steps",
            f"{config.steps} noise levels exceed the schedule's {T} timesteps; set "
            f"{context.table}.steps to at most {T}",
        )


SPECS: list[ComponentSpec] = [
    ComponentSpec(
        kind="sampler",
        name="euler",
        config=EulerConfig,
        build=EulerSampler,
        check=check_steps,
        summary="Euler steps on the probability-flow ODE (Karras et al. 2022, Algorithm 2)",
    ),
    ComponentSpec(
        kind="sampler",
        name="heun",
        config=HeunConfig,
        build=HeunSampler,
        check=check_steps,
        summary="Heun steps on the probability-flow ODE (Karras et al. 2022, Algorithm 1)",
    ),
]
