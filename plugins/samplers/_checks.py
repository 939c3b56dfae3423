"""The checks the built-in samplers share: their ``steps`` against the schedule."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from denoisekit import CheckContext, Problem


def steps_within_schedule(hint: str = "") -> Callable[[Any, CheckContext], Iterator[Problem]]:
    """A check that ``steps`` (when set) does not exceed the schedule's timesteps; ``hint``
    ends the message."""

    def check(config: Any, context: CheckContext) -> Iterator[Problem]:
        T = context.fact("schedule", "num_timesteps")
        if T is not None and config.steps is not None and config.steps > T:
            yield (
                "steps",
                f"{config.steps} steps exceed the schedule's {T} timesteps; set "
                f"{context.table}.steps to at most {T}{hint}",
            )

    return check


def check_steps(steps: int, num_timesteps: int) -> None:
    """``ValueError`` when a sampler's ``steps`` exceeds the schedule's ``num_timesteps``."""
    if steps > num_timesteps:
        raise ValueError(
            f"'steps' ({steps}) exceeds the schedule's number of timesteps ({num_timesteps}); "
            f"use steps <= {num_timesteps}"
        )
