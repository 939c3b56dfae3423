"""Stochastic gradient descent with momentum (``type = "sgd"``).

A thin factory over :class:`torch.optim.SGD`; optional Nesterov momentum (Sutskever et al.
2013). The kernel choice (``implementation``) works as for Adam: ``"auto"`` is the fused
kernel on CUDA and CPU, otherwise torch's default.

Recipe example::

    [optimizer]
    type = "sgd"
    lr = 0.01
    momentum = 0.9
    nesterov = true
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import torch

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import non_negative_finite, option, positive_finite

# Shared helpers of the optim plugins (same package, same owner).
from denoisekit.plugins.optim.adam import IMPLEMENTATIONS, kernel_flags, optimizer_facts


def _check_momentum(inst: Any, attribute: attrs.Attribute, value: float) -> None:
    non_negative_finite(inst, attribute, value)
    if value >= 1.0:
        raise ValueError(f"'{attribute.name}' must be in [0, 1): {value!r}")


def _check_nesterov(inst: Any, attribute: attrs.Attribute, value: bool) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"'{attribute.name}' must be true or false: {value!r}")
    if value and inst.momentum <= 0:
        raise ValueError(f"'{attribute.name}' = true needs 'momentum' > 0: {inst.momentum!r}")


@attrs.frozen(kw_only=True)
class SGDConfig:
    """Options of ``type = "sgd"``."""

    lr: float = option(
        1e-2, "learning rate (the peak, when an lr_schedule warms up)", validator=positive_finite
    )
    momentum: float = option(0.0, "momentum factor in [0, 1)", validator=_check_momentum)
    nesterov: bool = option(
        False, "Nesterov momentum (needs momentum > 0)", validator=_check_nesterov
    )
    weight_decay: float = option(0.0, "L2 penalty coefficient", validator=non_negative_finite)
    implementation: str = option(
        "auto",
        "kernel: auto (fused on CUDA/CPU, else torch's default), fused, foreach, for-loop",
        validator=attrs.validators.in_(IMPLEMENTATIONS),
    )


def build_sgd(
    config: SGDConfig,
    *,
    params: Iterable[Any],
    device: torch.device | str | None = None,
) -> torch.optim.SGD:
    """Build :class:`torch.optim.SGD` over ``params`` (tensors or param-group dicts).

    Args:
        config: the options.
        params: the parameters, or param groups whose own keys override the options.
        device: where training runs; decides what ``implementation = "auto"`` picks.
    """
    params = list(params)
    flags = kernel_flags(config.implementation, params, device, component="sgd")
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        **flags,
    )


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``sgd``."""
    return [
        ComponentSpec(
            kind="optimizer",
            name="sgd",
            config=SGDConfig,
            build=build_sgd,
            facts=optimizer_facts,
            summary="SGD with optional (Nesterov) momentum; fused kernel where supported.",
        )
    ]
