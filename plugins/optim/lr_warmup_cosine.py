"""Linear warmup, then cosine annealing to a floor (``type = "warmup-cosine"``).

Cosine annealing after Loshchilov & Hutter (2017, "SGDR", eq. 5, one cycle without restarts),
preceded by a linear warmup (Goyal et al. 2017).

*Notation:* ``s`` is the number of optimizer steps already taken (the scheduler is stepped
once per optimization step), ``W`` = ``warmup_steps``, ``T`` = ``total_steps`` (the run's
length), ``a`` = ``warmup_start``, ``lr`` the optimizer's (per param group) learning rate,
``lr_min`` = ``min_lr`` (an absolute learning rate, the same for every group). The learning
rate used by step ``s`` is::

    lr(s) = lr * (a + (1 - a) * s / W)                              for s < W
    lr(s) = lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2,
            p = (s - W) / (T - W)                                   for W <= s < T
    lr(s) = lr_min                                                  for s >= T

Built on :class:`torch.optim.lr_scheduler.LambdaLR`, so ``state_dict`` /
``load_state_dict`` resume it exactly (the checkpoint holds plain numbers only).

Recipe example::

    [lr_schedule]
    type = "warmup-cosine"
    warmup_steps = 1000
    min_lr = 1e-6
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import attrs
import torch
from torch.optim.lr_scheduler import LambdaLR

from denoisekit import CheckContext, ComponentSpec, Problem, hookimpl
from denoisekit.config import int_at_least, non_negative_finite, option, unit_interval
from denoisekit.errors import RecipeError


@attrs.frozen(kw_only=True)
class WarmupCosineConfig:
    """Options of ``type = "warmup-cosine"``."""

    warmup_steps: int = option(0, "steps of linear warmup (0 = none)", validator=int_at_least(0))
    warmup_start: float = option(
        0.0, "warmup starts at this fraction of the learning rate", validator=unit_interval
    )
    min_lr: float = option(
        0.0,
        "absolute learning rate reached at the last step and kept after it",
        validator=non_negative_finite,
    )


def warmup_cosine_factor(
    step: int,
    *,
    base_lr: float,
    min_lr: float,
    warmup_steps: int,
    warmup_start: float,
    total_steps: int,
) -> float:
    """Multiplier of ``base_lr`` after ``step`` optimizer steps (see the module docstring)."""
    if base_lr == 0.0:
        return 0.0  # a frozen group stays frozen
    # 1) linear warmup
    if step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    # 3) floor after the end of the run
    if step >= total_steps:
        return min_lr / base_lr
    # 2) cosine from base_lr down to min_lr
    p = (step - warmup_steps) / (total_steps - warmup_steps)
    lr = min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
    return lr / base_lr


def build_warmup_cosine(
    config: WarmupCosineConfig,
    *,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
) -> LambdaLR:
    """Build the schedule on ``optimizer`` (one curve per param group, from its own lr).

    Args:
        config: the options.
        optimizer: the optimizer whose learning rates the schedule sets.
        total_steps: the number of optimization steps of the run (``T``).

    Raises:
        RecipeError: ``total_steps`` is not positive, ``warmup_steps`` exceeds it, or
            ``min_lr`` exceeds a param group's learning rate.
    """
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps <= 0:
        raise RecipeError(
            f"lr_schedule warmup-cosine: the run's total steps must be a positive integer, "
            f"got {total_steps!r}; set the training length"
        )
    if config.warmup_steps > total_steps:
        raise RecipeError(
            f"lr_schedule warmup-cosine: warmup_steps ({config.warmup_steps}) exceeds the run's "
            f"total steps ({total_steps}); lower lr_schedule.warmup_steps"
        )
    factors = []
    for i, group in enumerate(optimizer.param_groups):
        # LambdaLR takes its base from "initial_lr" when set (a resumed or chained scheduler).
        base_lr = float(group.get("initial_lr", group["lr"]))
        if config.min_lr > base_lr and base_lr > 0:
            raise RecipeError(
                f"lr_schedule warmup-cosine: min_lr ({config.min_lr:g}) exceeds the learning "
                f"rate of param group {i} ({base_lr:g}); lower lr_schedule.min_lr"
            )
        factors.append(
            functools.partial(
                warmup_cosine_factor,
                base_lr=base_lr,
                min_lr=config.min_lr,
                warmup_steps=config.warmup_steps,
                warmup_start=config.warmup_start,
                total_steps=total_steps,
            )
        )
    return LambdaLR(optimizer, lr_lambda=factors)


def check_warmup_cosine(config: WarmupCosineConfig, context: CheckContext) -> Iterator[Problem]:
    """The warmup must fit in the run, and the floor must not exceed the optimizer's rate."""
    total = context.recipe.train.steps
    if config.warmup_steps > total:
        yield (
            "warmup_steps",
            f"{config.warmup_steps} warmup steps exceed the run's {total} steps (train.steps); "
            f"lower {context.table}.warmup_steps or raise train.steps",
        )
    lr = context.fact("optimizer", "lr")
    if lr is not None and 0 < lr < config.min_lr:
        yield (
            "min_lr",
            f"{config.min_lr:g} exceeds the optimizer's learning rate ({lr:g}); lower "
            f"{context.table}.min_lr",
        )


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``warmup-cosine``."""
    return [
        ComponentSpec(
            kind="lr_schedule",
            name="warmup-cosine",
            config=WarmupCosineConfig,
            build=build_warmup_cosine,
            check=check_warmup_cosine,
            summary="Linear warmup, then cosine annealing to min_lr at the last step.",
        )
    ]
