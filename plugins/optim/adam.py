"""Adam and AdamW optimizers (``type = "adam"`` / ``type = "adamw"``).

Thin factories over :class:`torch.optim.Adam` and :class:`torch.optim.AdamW` (Kingma & Ba
2015; Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"). The only logic
of their own is choosing the kernel: ``implementation = "auto"`` picks torch's *fused*
kernel where it is known to be supported and fast (CUDA and CPU, floating-point
parameters), and otherwise leaves the choice to torch (``foreach`` on CUDA-like devices, the
per-parameter loop elsewhere). All kernels compute the same update.

``weight_decay`` defaults to 0 for both: DDPM (Ho et al. 2020) and improved-diffusion train
with plain Adam(W) and no decay. Note that torch's own ``AdamW`` default is 1e-2.

Recipe example::

    [optimizer]
    type = "adamw"
    lr = 2e-4
    betas = [0.9, 0.999]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import torch

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import non_negative_finite, option, positive_finite
from denoisekit.errors import RecipeError

IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")

# Device types on which "auto" chooses the fused kernel: the ones where torch's fused Adam /
# AdamW / SGD are long-standing and faster than foreach. Elsewhere "auto" defers to torch.
_AUTO_FUSED_DEVICE_TYPES = ("cuda", "cpu")


# --------------------------------------------------------------------------- validators


def _check_betas(inst: Any, attribute: attrs.Attribute, value: tuple[float, float]) -> None:
    if len(value) != 2:
        raise ValueError(f"'{attribute.name}' must hold two numbers (beta1, beta2): {value!r}")
    for i, b in enumerate(value):
        if not (isinstance(b, int | float) and not isinstance(b, bool) and 0.0 <= b < 1.0):
            raise ValueError(f"'{attribute.name}[{i}]' must be in [0, 1): {b!r}")


_check_implementation = attrs.validators.in_(IMPLEMENTATIONS)


# --------------------------------------------------------------------------- kernel choice


def _iter_tensors(params: list[Any]) -> Iterable[torch.Tensor]:
    for p in params:
        if isinstance(p, dict):
            yield from ([p["params"]] if isinstance(p["params"], torch.Tensor) else p["params"])
        else:
            yield p


def kernel_flags(
    implementation: str,
    params: list[Any],
    device: torch.device | str | None,
    *,
    component: str,
) -> dict[str, bool | None]:
    """Map ``implementation`` to torch's ``fused=`` / ``foreach=`` keyword arguments.

    Args:
        implementation: one of :data:`IMPLEMENTATIONS`.
        params: the materialized parameters or param groups.
        device: where training runs (the run's device); ``None`` = the parameters' devices.
        component: the component name, for error messages.

    Returns:
        ``{"fused": ..., "foreach": ...}`` to pass to the torch optimizer.

    Raises:
        RecipeError: ``"fused"`` was asked for on a device or dtype torch cannot fuse.
    """
    tensors = list(_iter_tensors(params))
    if device is not None:
        device_types = {torch.device(device).type}
    else:
        device_types = {t.device.type for t in tensors}
    all_float = all(torch.is_floating_point(t) for t in tensors)

    if implementation == "for-loop":
        return {"fused": False, "foreach": False}
    if implementation == "foreach":
        return {"fused": False, "foreach": True}
    if implementation == "fused":
        supported = _fused_device_types()
        bad = sorted(device_types - set(supported))
        if bad or not all_float:
            what = f"device {', '.join(bad)}" if bad else "non-floating-point parameters"
            raise RecipeError(
                f'optimizer {component}: implementation = "fused" is not supported for {what} '
                f'(torch fuses on {", ".join(supported)}); set optimizer.implementation = "auto"'
            )
        return {"fused": True, "foreach": False}
    # "auto"
    if all_float and device_types and device_types <= set(_AUTO_FUSED_DEVICE_TYPES):
        return {"fused": True, "foreach": False}
    return {"fused": None, "foreach": None}  # torch's default: foreach where supported


def _fused_device_types() -> tuple[str, ...]:
    """Device types with fused optimizer kernels in the installed torch."""
    # torch exposes the list only privately; fall back to the two long-supported ones.
    from torch.optim import optimizer as _torch_optimizer

    getter = getattr(_torch_optimizer, "_get_fused_kernels_supported_devices", None)
    if getter is None:  # pragma: no cover - depends on the torch version
        return _AUTO_FUSED_DEVICE_TYPES
    return tuple(getter())


# --------------------------------------------------------------------------- configs


@attrs.frozen(kw_only=True)
class AdamConfig:
    """Options of ``type = "adam"`` (weight decay as an L2 term added to the gradient)."""

    lr: float = option(
        2e-4, "learning rate (the peak, when an lr_schedule warms up)", validator=positive_finite
    )
    betas: tuple[float, float] = option(
        (0.9, 0.999),
        "coefficients of the running averages of the gradient and its square",
        validator=_check_betas,
        converter=tuple,
    )
    eps: float = option(
        1e-8, "term added to the denominator for stability", validator=positive_finite
    )
    weight_decay: float = option(
        0.0,
        "L2 penalty coefficient (coupled, added to the gradient)",
        validator=non_negative_finite,
    )
    implementation: str = option(
        "auto",
        "kernel: auto (fused on CUDA/CPU, else torch's default), fused, foreach, for-loop",
        validator=_check_implementation,
    )


@attrs.frozen(kw_only=True)
class AdamWConfig(AdamConfig):
    """Options of ``type = "adamw"`` (decoupled weight decay, Loshchilov & Hutter 2019)."""

    weight_decay: float = option(
        0.0,
        "decoupled weight decay (0 as in DDPM; torch's own default is 1e-2)",
        validator=non_negative_finite,
    )


# --------------------------------------------------------------------------- factories


def optimizer_facts(config: Any) -> dict[str, float]:
    """The base learning rate, which an lr schedule may check its floor against."""
    return {"lr": config.lr}


def _build(
    cls: type[torch.optim.Optimizer],
    name: str,
    config: AdamConfig | AdamWConfig,
    params: Iterable[Any],
    device: torch.device | str | None,
) -> torch.optim.Optimizer:
    params = list(params)
    flags = kernel_flags(config.implementation, params, device, component=name)
    return cls(
        params,
        lr=config.lr,
        betas=(float(config.betas[0]), float(config.betas[1])),
        eps=config.eps,
        weight_decay=config.weight_decay,
        **flags,
    )


def build_adam(
    config: AdamConfig,
    *,
    params: Iterable[Any],
    device: torch.device | str | None = None,
) -> torch.optim.Adam:
    """Build :class:`torch.optim.Adam` over ``params`` (tensors or param-group dicts).

    Args:
        config: the options.
        params: the parameters, or param groups whose own keys override the options.
        device: where training runs; decides what ``implementation = "auto"`` picks.
    """
    return _build(torch.optim.Adam, "adam", config, params, device)


def build_adamw(
    config: AdamWConfig,
    *,
    params: Iterable[Any],
    device: torch.device | str | None = None,
) -> torch.optim.AdamW:
    """Build :class:`torch.optim.AdamW` over ``params`` (tensors or param-group dicts).

    Args:
        config: the options.
        params: the parameters, or param groups whose own keys override the options.
        device: where training runs; decides what ``implementation = "auto"`` picks.
    """
    return _build(torch.optim.AdamW, "adamw", config, params, device)


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``adam`` and ``adamw``."""
    return [
        ComponentSpec(
            kind="optimizer",
            name="adam",
            config=AdamConfig,
            build=build_adam,
            facts=optimizer_facts,
            summary="Adam (Kingma & Ba 2015), L2 weight decay; fused kernel where supported.",
        ),
        ComponentSpec(
            kind="optimizer",
            name="adamw",
            config=AdamWConfig,
            build=build_adamw,
            facts=optimizer_facts,
            summary="AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019).",
        ),
    ]
