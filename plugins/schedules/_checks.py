"""What the built-in schedules state and check when a recipe is loaded (shared by both)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from denoisekit import CheckContext, Problem


def timesteps_fact(config: Any) -> dict[str, int]:
    """What the recipe's other components may check against: the number of timesteps."""
    return {"num_timesteps": config.num_timesteps}


def buildable(build: Callable[[Any], Any]) -> Callable[[Any, CheckContext], Iterator[Problem]]:
    """A check that the table ``build`` gives for the options is a valid float64 schedule
    (building a table of at most MAX_TIMESTEPS values is cheap)."""

    def check(config: Any, context: CheckContext) -> Iterator[Problem]:
        try:
            build(config)
        except ValueError as exc:
            yield "", f"these options give no valid schedule in float64 ({exc})"

    return check
