"""Helpers for component config classes.

A component's config is a frozen attrs class whose fields are its recipe keys. Declare
each field with :func:`option`, which records the one-line doc that ``denoisekit plugins``
and the recipe reference show::

    @attrs.frozen(kw_only=True)
    class DDIMConfig:
        steps: int = option(50, "number of sampling steps", validator=int_at_least(1))
        eta: float = option(0.0, "0 deterministic, 1 DDPM-like", validator=unit_interval)

Validate with the validators below (``int_at_least(1)``, ``positive_finite``, ...); one of
your own must ``raise`` (never ``assert``) a message naming the field, as these do.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any

import attrs

from denoisekit.errors import DenoisekitError

DOC_KEY = "denoisekit.doc"

#: The most diffusion timesteps a schedule may have. Sampling the full chain and the exact
#: NLL take one network evaluation per timestep, and the tables are built on the host:
#: beyond this a recipe is almost surely a typo (DDPM uses 1000, Improved DDPM 4000).
MAX_TIMESTEPS = 100_000

MEMORY_LIMIT_ENV = "DENOISEKIT_MEMORY_LIMIT_GB"

#: An attrs validator: ``check(instance, attribute, value)`` raises ``ValueError``.
Validator = Callable[[Any, attrs.Attribute, Any], None]


def option(
    default: Any = attrs.NOTHING,
    doc: str = "",
    *,
    validator: Any = None,
    converter: Any = None,
    factory: Any = None,
) -> Any:
    """Declare a config field with a default and a one-line doc."""
    return attrs.field(
        default=default,
        factory=factory,
        validator=validator,
        converter=converter,
        metadata={DOC_KEY: doc},
    )


def unit_interval(inst: Any, attribute: attrs.Attribute, value: float) -> None:
    """Validator: ``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"'{attribute.name}' must be in [0, 1]: {value!r}")


def open_unit_interval(inst: Any, attribute: attrs.Attribute, value: float) -> None:
    """Validator: ``0 < value < 1``."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"'{attribute.name}' must be in (0, 1): {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def int_at_least(low: int, *, optional: bool = False) -> Validator:
    """Validator: an ``int`` (not a bool) ``>= low``; with ``optional``, also ``None``."""
    wanted = "a positive integer" if low == 1 else f"an integer >= {low}"

    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if optional and value is None:
            return
        if not (_is_int(value) and value >= low):
            raise ValueError(f"'{attribute.name}' must be {wanted}: {value!r}")

    return check


def int_between(low: int, high: int, *, optional: bool = False) -> Validator:
    """Validator: an ``int`` (not a bool) in ``[low, high]``; with ``optional``, also ``None``."""

    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if optional and value is None:
            return
        if not (_is_int(value) and low <= value <= high):
            raise ValueError(
                f"'{attribute.name}' must be an integer from {low} to {high}: {value!r}"
            )

    return check


def positive_finite(inst: Any, attribute: attrs.Attribute, value: float) -> None:
    """Validator: a finite number > 0."""
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"'{attribute.name}' must be a finite number > 0: {value!r}")


def non_negative_finite(inst: Any, attribute: attrs.Attribute, value: float) -> None:
    """Validator: a finite number >= 0."""
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise ValueError(f"'{attribute.name}' must be a finite number >= 0: {value!r}")


def finite_number(*, allow: tuple[float, ...] = ()) -> Validator:
    """Validator: a finite number (not a bool), or an infinity in ``allow`` (never NaN)."""

    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not (_is_number(value) and (math.isfinite(value) or value in allow)):
            extra = "".join(f" or {v}" for v in allow)
            raise ValueError(f"'{attribute.name}' must be a finite number{extra}: {value!r}")

    return check


def positive_ints(inst: Any, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    """Validator: every element is an int > 0."""
    for i, v in enumerate(value):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"'{attribute.name}[{i}]' must be a positive integer: {v!r}")


def memory_limit() -> int | None:
    """Bytes a run may need at most: ``$DENOISEKIT_MEMORY_LIMIT_GB`` GiB where set, else the
    machine's physical memory (``None`` where the system does not say)."""
    text, conf = os.environ.get(MEMORY_LIMIT_ENV), getattr(os, "sysconf", None)
    if text is None:
        return conf("SC_PAGE_SIZE") * conf("SC_PHYS_PAGES") if conf else None
    gib = float(text) if re.fullmatch(r"\d+(\.\d*)?(e-?\d+)?", text.strip()) else 0.0
    if not 0 < gib < math.inf:
        raise DenoisekitError(f"{MEMORY_LIMIT_ENV}={text!r}: give a number of GiB > 0")
    return int(gib * 2**30)


def over_memory(nbytes: float, what: str) -> str | None:
    """``None`` if ``nbytes`` fit :func:`memory_limit`, else "``what`` needs at least ..."."""

    def size(n: float) -> str:
        i = min(6, int(math.log(n, 1024))) if n >= 1024 else 0
        return f"{n / 1024**i:.3g} {('B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB')[i]}"

    limit, env = memory_limit(), MEMORY_LIMIT_ENV in os.environ
    if limit is None or nbytes <= limit:
        return None
    has = f"that {MEMORY_LIMIT_ENV} allows" if env else "this machine has"
    return f"{what} needs at least {size(nbytes)}, more than the {size(limit)} {has}"
