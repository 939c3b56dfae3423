"""The linear beta schedule (Ho et al. 2020, "DDPM", section 4).

*Notation*: ``beta_t`` runs linearly from ``beta_start`` to ``beta_end`` over ``T`` steps.
The paper's values (1e-4 to 0.02) are for ``T = 1000``; for other ``T`` both ends are
scaled by ``1000 / T`` so that the total noise added stays about the same
(improved-diffusion's ``get_named_beta_schedule("linear", T)``).
"""

from __future__ import annotations

import attrs
import torch

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import MAX_TIMESTEPS, int_between, open_unit_interval, option
from denoisekit.diffusion import DiscreteSchedule
from denoisekit.plugins.schedules._checks import buildable, timesteps_fact


def _check_beta_end(inst: LinearScheduleConfig, attribute: attrs.Attribute, value: float) -> None:
    open_unit_interval(inst, attribute, value)
    if value < inst.beta_start:
        raise ValueError(
            f"'{attribute.name}' must be >= 'beta_start' ({inst.beta_start!r}): {value!r}"
        )
    scaled = value * 1000.0 / inst.num_timesteps
    if scaled >= 1.0:
        raise ValueError(
            f"'{attribute.name}' scaled by 1000 / num_timesteps is {scaled!r} (>= 1) for "
            f"num_timesteps = {inst.num_timesteps}: use more timesteps or a smaller "
            f"'{attribute.name}'"
        )


@attrs.frozen(kw_only=True)
class LinearScheduleConfig:
    """Options of the linear schedule."""

    num_timesteps: int = option(
        1000,
        f"number of diffusion steps T (at most {MAX_TIMESTEPS})",
        validator=int_between(1, MAX_TIMESTEPS),
    )
    beta_start: float = option(
        1e-4, "beta_1 for T = 1000 (scaled by 1000 / T)", validator=open_unit_interval
    )
    beta_end: float = option(
        0.02, "beta_T for T = 1000 (scaled by 1000 / T)", validator=_check_beta_end
    )


def linear_betas(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """``beta_1 .. beta_T``: ``linspace(beta_start, beta_end, T) * 1000 / T`` (float64)."""
    scale = 1000.0 / num_timesteps
    return torch.linspace(beta_start * scale, beta_end * scale, num_timesteps, dtype=torch.float64)


def build_linear(config: LinearScheduleConfig) -> DiscreteSchedule:
    """Build the linear schedule described by ``config``."""
    return DiscreteSchedule.from_betas(
        linear_betas(config.num_timesteps, config.beta_start, config.beta_end)
    )


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            kind="schedule",
            name="linear",
            config=LinearScheduleConfig,
            build=build_linear,
            facts=timesteps_fact,
            check=buildable(build_linear),
            summary="Linear betas 1e-4 to 0.02 (Ho et al. 2020), rescaled by 1000 / T.",
        )
    ]
