"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", Algorithm 2): a second-order multistep solver of the
probability-flow ODE in its data-prediction form.

*Notation*: ``alpha_t = sqrt(alpha_bar_t)``, ``sigma_t = sqrt(1 - alpha_bar_t)``,
``lambda_t = log(alpha_t / sigma_t)`` (half the log-SNR). From ``t_{i-1}`` to ``t_i``
with ``h_i = lambda_{t_i} - lambda_{t_{i-1}}``:

    x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (exp(-h_i) - 1) D_i,
    D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2},   r_i = h_{i-1} / h_i,

with ``D_i = x0_{i-1}`` (DDIM's first-order step) on the first step and, with
``lower_order_final``, on the last. The sampler evaluates the network at ``steps``
timesteps from ``T - 1`` down to ``0`` and returns the data prediction at timestep 0
(the jump to ``sigma = 0``): ``steps`` network evaluations in all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import torch

from denoisekit import ComponentSpec, DenoiserLike, hookimpl
from denoisekit.config import finite_number, int_at_least, option
from denoisekit.denoiser import clip_to_range
from denoisekit.diffusion import SPACINGS, sampling_steps, spaced_timesteps
from denoisekit.plugins.samplers._checks import check_steps, steps_within_schedule


@attrs.frozen(kw_only=True)
class DPMSolverConfig:
    """Options of the DPM-Solver++(2M) sampler."""

    steps: int = option(
        20, "network evaluations (at least 2, at most the schedule's)", validator=int_at_least(2)
    )
    spacing: str = option(
        "logsnr",
        "timesteps: logsnr (uniform in log-SNR), linspace (T - 1 to 0), leading, trailing, "
        "karras (the nearest steps to those noise levels)",
        validator=attrs.validators.in_(SPACINGS),
    )
    lambda_min: float = option(
        -5.1,
        "lowest lambda = log(alpha / sigma) the logsnr spacing starts from (diffusers' "
        "lambda_min_clipped: keeps steps off the cosine schedule's clipped end; -inf: none)",
        validator=finite_number(allow=(-math.inf,)),
    )
    lower_order_final: bool = option(
        True,
        "first-order last step (steadier below ~15 steps)",
        validator=attrs.validators.instance_of(bool),
    )
    clip_denoised: bool = option(
        True,
        "clip each x0 prediction to the data range ([-1, 1] in pixel space; latents: never)",
        validator=attrs.validators.instance_of(bool),
    )


class DPMSolverSampler:
    """DPM-Solver++(2M); see the module docstring."""

    def __init__(self, config: DPMSolverConfig) -> None:
        self.config = config

    def timesteps(self, alphas_cumprod: Any) -> list[int]:
        """The timesteps where the network is evaluated on the schedule ``alphas_cumprod``
        (its ``(T,)`` alpha_bar table), noisiest first.

        Raises:
            ValueError: when ``steps`` exceeds the schedule's number of timesteps.
        """
        c = self.config
        return spaced_timesteps(alphas_cumprod, c.steps, c.spacing, lambda_min=c.lambda_min)

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
        generator: Any = None,
        cond: torch.Tensor | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> torch.Tensor:
        """Solve from ``x_T`` (at timestep ``T - 1``) to the data; deterministic."""
        schedule = denoiser.schedule
        steps = sampling_steps(schedule, self.timesteps(schedule.alphas_cumprod), x_T)
        alpha = [math.sqrt(a) for a in steps.alpha_bar]
        sigma = [math.sqrt(1.0 - a) for a in steps.alpha_bar]
        lam = [math.log(a / s) for a, s in zip(alpha, sigma, strict=True)]
        ts, t_batch = steps.timesteps, steps.t
        x, previous, h_previous = x_T, None, None
        for i, t in enumerate(ts):
            _, x0 = denoiser.predict(x, t_batch[i], cond)
            if self.config.clip_denoised:
                x0 = clip_to_range(x0, denoiser)
            if callback is not None:
                callback({"i": i, "t": t, "x_t": x, "x0": x0})
            if i + 1 < len(ts):  # after timestep 0 the jump to sigma = 0 gives x0 itself
                h = lam[i + 1] - lam[i]
                d = x0
                if previous is not None and not (
                    self.config.lower_order_final and i + 2 == len(ts)
                ):
                    r = h_previous / h
                    d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * previous
                x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * math.expm1(-h) * d
                previous, h_previous = x0, h
        return clip_to_range(x0, denoiser)

    def __repr__(self) -> str:
        return f"DPMSolverSampler({self.config!r})"


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            kind="sampler",
            name="dpmpp-2m",
            config=DPMSolverConfig,
            build=DPMSolverSampler,
            check=steps_within_schedule(),
            summary="DPM-Solver++(2M) (Lu et al. 2022): second-order multistep ODE solver.",
        )
    ]
