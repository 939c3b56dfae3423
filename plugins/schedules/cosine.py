"""The cosine noise schedule (Nichol & Dhariwal 2021, "Improved DDPM", eq. 17).

*Notation*: ``alpha_bar(t) = f(t) / f(0)`` with
``f(t) = cos²(((t / T) + s) / (1 + s) · π / 2)``; ``beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1)``
clipped to ``max_beta`` (the paper uses 0.999 to avoid a singularity at ``t = T``).
``alpha_bar`` is then recomputed from the clipped betas, which is diffusers'
``squaredcos_cap_v2`` (index ``i = 0 .. T-1`` holds the paper's ``t = i + 1``).
"""

from __future__ import annotations

import math

import attrs
import torch

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import (
    MAX_TIMESTEPS,
    int_between,
    non_negative_finite,
    open_unit_interval,
    option,
)
from denoisekit.diffusion import DiscreteSchedule
from denoisekit.plugins.schedules._checks import buildable, timesteps_fact


@attrs.frozen(kw_only=True)
class CosineScheduleConfig:
    """Options of the cosine schedule."""

    num_timesteps: int = option(
        1000,
        f"number of diffusion steps T (at most {MAX_TIMESTEPS})",
        validator=int_between(1, MAX_TIMESTEPS),
    )
    s: float = option(
        0.008,
        "small offset keeping beta_1 from being too small near t = 0",
        validator=non_negative_finite,
    )
    max_beta: float = option(
        0.999,
        "upper clip of every beta (avoids the singularity at t = T)",
        validator=open_unit_interval,
    )


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """``beta_1 .. beta_T`` of the cosine schedule, clipped at ``max_beta`` (float64)."""

    def f(t: float) -> float:
        return math.cos((t / num_timesteps + s) / (1.0 + s) * math.pi / 2.0) ** 2

    betas = [min(1.0 - f(i + 1) / f(i), max_beta) for i in range(num_timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


def build_cosine(config: CosineScheduleConfig) -> DiscreteSchedule:
    """Build the cosine schedule described by ``config``."""
    betas = cosine_betas(config.num_timesteps, config.s, config.max_beta)
    return DiscreteSchedule.from_betas(betas)


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            kind="schedule",
            name="cosine",
            config=CosineScheduleConfig,
            build=build_cosine,
            facts=timesteps_fact,
            check=buildable(build_cosine),
            summary="Cosine alpha_bar schedule (Nichol & Dhariwal 2021), betas capped at max_beta.",
        )
    ]
