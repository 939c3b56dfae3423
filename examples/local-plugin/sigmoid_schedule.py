"""``sigmoid``: the sigmoid noise schedule (Jabri et al. 2022; Chen 2023, Algorithm 1).

A plugin in a single module, loaded by a recipe's ``plugins = ["sigmoid_schedule"]``: the
recipe's folder is searched first, so the file only has to sit beside the recipe. Nothing is
installed and no entry point is declared.

*Notation* (Chen 2023, "On the importance of noise scheduling for diffusion models"): with
``v(x) = sigmoid(x / tau)`` and ``s = t / T`` for ``t = 1 .. T``,

    alpha_bar(s) = (v(end) - v(s (end - start) + start)) / (v(end) - v(start)),

clipped below at ``clip_min`` (``alpha_bar(1) = 0`` exactly). ``start``, ``end`` and ``tau``
shape how fast the signal is destroyed; Chen's defaults are ``start = -3``, ``end = 3``,
``tau = 1`` (``tau`` above 1 keeps more signal at mid-range timesteps).
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from denoisekit import (
    MAX_TIMESTEPS,
    ComponentSpec,
    DiscreteSchedule,
    hookimpl,
    int_between,
    option,
    positive_finite,
)


def _finite(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"'{attribute.name}' must be a finite number: {value!r}")


def _end_above_start(inst: SigmoidConfig, attribute: attrs.Attribute, value: Any) -> None:
    _finite(inst, attribute, value)
    if value <= inst.start:
        raise ValueError(f"'end' ({value}) must be greater than 'start' ({inst.start})")


@attrs.frozen(kw_only=True)
class SigmoidConfig:
    """Options of the ``sigmoid`` schedule."""

    num_timesteps: int = option(
        1000, "number of diffusion steps T", validator=int_between(2, MAX_TIMESTEPS)
    )
    start: float = option(-3.0, "sigmoid input at s = 0", validator=_finite)
    end: float = option(
        3.0, "sigmoid input at s = 1 (greater than start)", validator=_end_above_start
    )
    tau: float = option(
        1.0, "temperature: larger keeps more signal mid-way", validator=positive_finite
    )
    clip_min: float = option(
        1e-9,
        "smallest alpha_bar (the last step would be 0)",
        validator=[positive_finite, attrs.validators.lt(0.5)],
    )


def sigmoid_alphas_cumprod(config: SigmoidConfig) -> torch.Tensor:
    """``alpha_bar`` at ``s = t / T``, ``t = 1 .. T`` (float64), per the module docstring."""
    c = config
    s = torch.arange(1, c.num_timesteps + 1, dtype=torch.float64) / c.num_timesteps
    v_start = torch.sigmoid(torch.tensor(c.start / c.tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(c.end / c.tau, dtype=torch.float64))
    v = torch.sigmoid((s * (c.end - c.start) + c.start) / c.tau)
    return ((v_end - v) / (v_end - v_start)).clamp(min=c.clip_min)


def build_sigmoid(config: SigmoidConfig) -> DiscreteSchedule:
    """Build the schedule."""
    return DiscreteSchedule(sigmoid_alphas_cumprod(config))


def sigmoid_facts(config: SigmoidConfig) -> dict[str, int]:
    """What samplers check their steps against when the recipe is loaded."""
    return {"num_timesteps": config.num_timesteps}


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            kind="schedule",
            name="sigmoid",
            config=SigmoidConfig,
            build=build_sigmoid,
            facts=sigmoid_facts,
            summary="sigmoid schedule (Chen 2023): start, end and tau shape the noise curve",
            probe={"num_timesteps": 10},
        )
    ]
