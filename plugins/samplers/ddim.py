"""DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models").

*Notation* (paper eq. 12, with ``alpha`` there = our ``alpha_bar``): from timestep ``t`` to
the next kept timestep ``s < t`` (``alpha_bar_s = 1`` after the last one),

    x0^  = the denoiser's estimate (clipped to [-1, 1] when ``clip_denoised``)
    eps^ = (x_t - sqrt(alpha_bar_t) x0^) / sqrt(1 - alpha_bar_t)
    x_s  = sqrt(alpha_bar_s) x0^ + sqrt(1 - alpha_bar_s - sigma²) eps^ + sigma z,
    sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)
    (eq. 16).

``eta = 0`` is the deterministic DDIM; ``eta = 1`` is exactly DDPM ancestral sampling with
the posterior ("fixed_small") variance on the same timesteps. ``eps^`` is recomputed from
the clipped ``x0^`` (as improved-diffusion does) so that this equivalence also holds with
clipping. The step goes to the next timestep of the list, which for ``leading`` spacing is
diffusers' ``t - T // steps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from denoisekit import ComponentSpec, DenoiserLike, hookimpl
from denoisekit.config import int_at_least, option, unit_interval
from denoisekit.denoiser import clip_to_range
from denoisekit.diffusion import SPACINGS, randn, sampling_steps, spaced_timesteps
from denoisekit.plugins.samplers._checks import check_steps, steps_within_schedule


@attrs.frozen(kw_only=True)
class DDIMConfig:
    """Options of the DDIM sampler."""

    steps: int = option(
        50,
        "number of sampling steps (at most the schedule's timesteps)",
        validator=int_at_least(1),
    )
    eta: float = option(
        0.0,
        "noise scale: 0 deterministic DDIM, 1 DDPM ancestral (fixed-small variance)",
        validator=unit_interval,
    )
    spacing: str = option(
        "leading",
        "which timesteps to visit: leading, trailing, linspace (as diffusers defines "
        "them), logsnr, karras (the nearest steps to those noise levels)",
        validator=attrs.validators.in_(SPACINGS),
    )
    clip_denoised: bool = option(
        True,
        "clip each x0 prediction to the data range ([-1, 1] in pixel space; latents: never)",
        validator=attrs.validators.instance_of(bool),
    )


class DDIMSampler:
    """DDIM sampler; see the module docstring."""

    def __init__(self, config: DDIMConfig) -> None:
        self.config = config

    def timesteps(self, alphas_cumprod: Any) -> list[int]:
        """The original-schedule timesteps visited on the schedule ``alphas_cumprod`` (its
        ``(T,)`` alpha_bar table), noisiest first.

        Raises:
            ValueError: when ``steps`` exceeds the schedule's number of timesteps.
        """
        c = self.config
        return spaced_timesteps(alphas_cumprod, c.steps, c.spacing)

    def num_evaluations(self, num_timesteps: int) -> int:
        """One network evaluation per step.

        Raises:
            ValueError: when ``steps`` exceeds ``num_timesteps``.
        """
        check_steps(self.config.steps, num_timesteps)
        return self.config.steps

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
                for the noise of ``eta > 0``.
            cond: conditioning passed to the denoiser.
            callback: called after each step's prediction with ``{"i": step index from 0,
                "t": original timestep (int), "x_t": the current sample, "x0": the clipped
                x0 estimate}``.

        Returns:
            Samples of ``x_T``'s shape, dtype and device, clamped to the denoiser's
            ``data_range`` ([-1, 1]; latents: not clamped).

        Raises:
            ValueError: when ``steps`` exceeds the schedule's number of timesteps.
        """
        schedule = denoiser.schedule
        steps = sampling_steps(schedule, self.timesteps(schedule.alphas_cumprod), x_T)
        eta = self.config.eta
        # Step tables (python floats: kernel scalars, no per-step device tensors or syncs).
        sqrt_ab, sqrt_1m_ab, c_x0, c_eps, sigma = [], [], [], [], []
        for ab_t, ab_s in zip(steps.alpha_bar, steps.alpha_bar_next, strict=True):
            var = eta**2 * (1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s)  # eq. (16)
            sqrt_ab.append(math.sqrt(ab_t))
            sqrt_1m_ab.append(math.sqrt(1.0 - ab_t))
            c_x0.append(math.sqrt(ab_s))
            c_eps.append(math.sqrt(max(1.0 - ab_s - var, 0.0)))
            sigma.append(math.sqrt(var))

        x = x_T
        for n, t in enumerate(steps.timesteps):
            eps, x0 = denoiser.predict(x, steps.t[n], cond)
            if self.config.clip_denoised:
                x0 = clip_to_range(x0, denoiser)
                eps = (x - sqrt_ab[n] * x0) / sqrt_1m_ab[n]
            if callback is not None:
                callback({"i": n, "t": t, "x_t": x, "x0": x0})
            # Eq. (12): "predicted x0" + "direction pointing to x_t" + random noise.
            x = c_x0[n] * x0 + c_eps[n] * eps
            if sigma[n] > 0.0:
                x = x + sigma[n] * randn(x.shape, generator, device=x.device, dtype=x.dtype)
        return clip_to_range(x, denoiser)

    def __repr__(self) -> str:
        return f"DDIMSampler({self.config!r})"


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            kind="sampler",
            name="ddim",
            config=DDIMConfig,
            build=DDIMSampler,
            check=steps_within_schedule(),
            summary="DDIM (Song et al. 2021): deterministic at eta = 0, DDPM-like at eta = 1.",
        )
    ]
