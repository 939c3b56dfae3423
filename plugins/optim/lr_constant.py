"""Constant learning rate with an optional linear warmup (``type = "constant"``).

*Notation:* ``s`` is the number of optimizer steps already taken (the scheduler is stepped
once per optimization step), ``W`` = ``warmup_steps``, ``a`` = ``warmup_start``, ``lr`` the
optimizer's (per param group) learning rate. The learning rate used by step ``s`` is::

    lr(s) = lr * (a + (1 - a) * s / W)    for s < W   (linear warmup)
    lr(s) = lr                            for s >= W

Built on :class:`torch.optim.lr_scheduler.LambdaLR`, so ``state_dict`` /
``load_state_dict`` resume it exactly (the checkpoint holds plain numbers only).

Recipe example::

    [lr_schedule]
    type = "constant"
    warmup_steps = 500
"""

from __future__ import annotations

import functools

import attrs
import torch
from torch.optim.lr_scheduler import LambdaLR

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import int_at_least, option, unit_interval


@attrs.frozen(kw_only=True)
class ConstantLRConfig:
    """Options of ``type = "constant"``."""

    warmup_steps: int = option(0, "steps of linear warmup (0 = none)", validator=int_at_least(0))
    warmup_start: float = option(
        0.0, "warmup starts at this fraction of the learning rate", validator=unit_interval
    )


def constant_factor(step: int, *, warmup_steps: int, warmup_start: float) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps."""
    if step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    return 1.0


def build_constant(
    config: ConstantLRConfig,
    *,
    optimizer: torch.optim.Optimizer,
    total_steps: int | None = None,
) -> LambdaLR:
    """Build the schedule on ``optimizer`` (every param group, each at its own lr).

    Args:
        config: the options.
        optimizer: the optimizer whose learning rates the schedule sets.
        total_steps: the run's length; unused (the rate stays constant after warmup).
    """
    factor = functools.partial(
        constant_factor, warmup_steps=config.warmup_steps, warmup_start=config.warmup_start
    )
    return LambdaLR(optimizer, lr_lambda=factor)


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``constant``."""
    return [
        ComponentSpec(
            kind="lr_schedule",
            name="constant",
            config=ConstantLRConfig,
            build=build_constant,
            summary="Constant learning rate after an optional linear warmup.",
        )
    ]
