"""Ancestral DDPM sampling (Ho et al. 2020, algorithm 2), optionally on a respaced chain.

*Notation*: ``alpha_bar_t`` is the schedule's cumulative product, ``beta_t = 1 - alpha_t``.
Each step predicts ``x0`` (clipped to [-1, 1] when ``clip_denoised``) and draws
``x_{t-1} ~ N(mu~(x_t, x0), sigma_t² I)`` with ``mu~`` the posterior mean of DDPM eq. (7)
and ``sigma_t² = beta~_t`` (``fixed_small``, the posterior variance) or ``beta_t``
(``fixed_large``); no noise is added at the last step.

With ``steps`` set, the chain keeps ``steps`` timesteps ``t_1 < ... < t_K`` of the training
schedule and uses the respaced betas ``1 - alpha_bar_{t_i} / alpha_bar_{t_{i-1}}``
(Nichol & Dhariwal 2021, "Improved DDPM", section 4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from denoisekit import ComponentSpec, DenoiserLike, hookimpl
from denoisekit.config import int_at_least, option
from denoisekit.denoiser import clip_to_range
from denoisekit.diffusion import (
    SPACINGS,
    VARIANCES,
    DiscreteSchedule,
    randn,
    sampling_steps,
    spaced_timesteps,
)
from denoisekit.plugins.samplers._checks import check_steps, steps_within_schedule


@attrs.frozen(kw_only=True)
class DDPMConfig:
    """Options of the DDPM sampler."""

    steps: int | None = option(
        None,
        "number of sampling steps; None: the full training chain (T steps)",
        validator=int_at_least(1, optional=True),
    )
    spacing: str = option(
        "linspace",
        "which timesteps a shortened chain keeps: linspace (Improved DDPM), leading, "
        "trailing, logsnr, karras (the nearest steps to those noise levels)",
        validator=attrs.validators.in_(SPACINGS),
    )
    variance: str = option(
        "fixed_small",
        "step variance: fixed_small (posterior variance beta~_t) or fixed_large (beta_t)",
        validator=attrs.validators.in_(VARIANCES),
    )
    clip_denoised: bool = option(
        True,
        "clip each x0 prediction to the data range ([-1, 1] in pixel space; latents: never)",
        validator=attrs.validators.instance_of(bool),
    )


class DDPMSampler:
    """Ancestral sampler; see the module docstring."""

    def __init__(self, config: DDPMConfig) -> None:
        self.config = config

    def timesteps(self, alphas_cumprod: Any) -> list[int]:
        """The original-schedule timesteps visited on the schedule ``alphas_cumprod`` (its
        ``(T,)`` alpha_bar table), noisiest first.

        Raises:
            ValueError: when ``steps`` exceeds the schedule's number of timesteps.
        """
        T = alphas_cumprod if isinstance(alphas_cumprod, int) else len(alphas_cumprod)
        steps = T if self.config.steps is None else self.config.steps
        return spaced_timesteps(alphas_cumprod, steps, self.config.spacing)

    def num_evaluations(self, num_timesteps: int) -> int:
        """One network evaluation per step.

        Raises:
            ValueError: when ``steps`` exceeds ``num_timesteps``.
        """
        steps = num_timesteps if self.config.steps is None else self.config.steps
        check_steps(steps, num_timesteps)
        return steps

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
        """Draw samples from the starting noise ``x_T`` (``(B, ...)``; not modified).

        Args:
            denoiser: gives ``(eps, x0)`` estimates at original-schedule timesteps.
            generator: a generator or one per image (see :func:`denoisekit.diffusion.randn`)
                for each step's noise.
            cond: conditioning passed to the denoiser.
            callback: called after each step's prediction with ``{"i": step index from 0,
                "t": original timestep (int), "x_t": the current sample, "x0": the clipped
                x0 estimate}``.

        Returns:
            Samples of ``x_T``'s shape, dtype and device, clamped to the denoiser's
            ``data_range`` ([-1, 1]; latents: not clamped).
        """
        schedule = denoiser.schedule
        steps = sampling_steps(schedule, self.timesteps(schedule.alphas_cumprod), x_T)
        # Step tables, built once per call. `respace` keeps alpha_bar at the visited
        # timesteps; its index i (ascending) is step K - 1 - i (noisiest first).
        respaced, _ = DiscreteSchedule.of(schedule).respace(steps.timesteps)
        host = respaced.tables("cpu", torch.float64)
        var = host.posterior_variance if self.config.variance == "fixed_small" else host.betas
        # Python floats: kernel scalars, no device tensors and no host-device syncs per step.
        coef_x0 = host.posterior_mean_coef1.tolist()
        coef_xt = host.posterior_mean_coef2.tolist()
        sigma = var.sqrt().tolist()

        x = x_T
        for n, t in enumerate(steps.timesteps):  # n: steps taken
            i = len(steps.timesteps) - 1 - n  # the respaced index
            _, x0 = denoiser.predict(x, steps.t[n], cond)
            if self.config.clip_denoised:
                x0 = clip_to_range(x0, denoiser)
            if callback is not None:
                callback({"i": n, "t": t, "x_t": x, "x0": x0})
            # DDPM eq. (7): x_{t-1} = mu~(x_t, x0) + sigma_t z, z ~ N(0, I); z = 0 at the end.
            x = coef_x0[i] * x0 + coef_xt[i] * x
            if i > 0:
                x = x + sigma[i] * randn(x.shape, generator, device=x.device, dtype=x.dtype)
        return clip_to_range(x, denoiser)

    def __repr__(self) -> str:
        return f"DDPMSampler({self.config!r})"


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            kind="sampler",
            name="ddpm",
            config=DDPMConfig,
            build=DDPMSampler,
            check=steps_within_schedule(" (or leave it unset: the full chain)"),
            summary="Ancestral DDPM sampling (Ho et al. 2020), full or respaced chain.",
        )
    ]
