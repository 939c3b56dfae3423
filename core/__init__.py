"""denoisekit: a modular, plugin-based framework for denoising diffusion models.

The public plugin API (see docs/writing-a-plugin.md): :data:`hookimpl`, :class:`ComponentSpec`,
the kinds and their contracts, config helpers and validators, :class:`Denoiser`,
:class:`DiscreteSchedule` and :mod:`diffusion`, the user-facing errors, and :func:`build`
(``denoisekit.build("sampler", "ddim", steps=20)``). The names in ``_LAZY`` import torch or
the host, so they are loaded on first access: ``import denoisekit`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

from denoisekit.config import (
    MAX_TIMESTEPS,
    int_at_least,
    int_between,
    non_negative_finite,
    open_unit_interval,
    option,
    positive_finite,
    positive_ints,
    unit_interval,
)
from denoisekit.contracts import (
    BUILD_CONTEXT,
    FACTS,
    KIND_RECORDS,
    KINDS,
    PROBE_KINDS,
    Autoencoder,
    Backbone,
    BackboneConfig,
    CheckContext,
    ComponentSpec,
    DataLike,
    DenoiserLike,
    Hook,
    Kind,
    Loss,
    LRSchedule,
    Metric,
    MetricContext,
    NoiseSchedule,
    Optimizer,
    Problem,
    SamplerLike,
    SampleSet,
    optional,
)
from denoisekit.errors import (
    CheckpointError,
    ComponentError,
    DataError,
    DenoisekitError,
    PluginLoadError,
    RecipeError,
    RegistryError,
)
from denoisekit.hookspecs import PROJECT

if TYPE_CHECKING:
    from denoisekit import autoencoder, diffusion
    from denoisekit.autoencoder import DiagonalGaussian
    from denoisekit.denoiser import PREDICTION_TYPES, Denoiser
    from denoisekit.diffusion import DiscreteSchedule
    from denoisekit.host.build import build

__version__ = "0.1.0"

#: Marker for hook implementations: ``@denoisekit.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)

# name → (module, attribute or None for the module itself), imported on first access.
_LAZY: dict[str, tuple[str, str | None]] = {
    "Denoiser": ("denoisekit.denoiser", "Denoiser"),
    "PREDICTION_TYPES": ("denoisekit.denoiser", "PREDICTION_TYPES"),
    "DiscreteSchedule": ("denoisekit.diffusion", "DiscreteSchedule"),
    "diffusion": ("denoisekit.diffusion", None),
    "DiagonalGaussian": ("denoisekit.autoencoder", "DiagonalGaussian"),
    "autoencoder": ("denoisekit.autoencoder", None),
    "build": ("denoisekit.host.build", "build"),  # the one reference from the API to the host
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attribute is None else getattr(module, attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'denoisekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "BUILD_CONTEXT", "FACTS", "KINDS", "KIND_RECORDS", "MAX_TIMESTEPS", "PREDICTION_TYPES",
    "PROBE_KINDS", "Autoencoder", "Backbone", "BackboneConfig", "CheckContext", "CheckpointError",
    "ComponentError", "ComponentSpec", "DataError", "DataLike", "DenoisekitError", "Denoiser",
    "DenoiserLike", "DiagonalGaussian", "DiscreteSchedule", "Hook", "Kind", "LRSchedule", "Loss",
    "Metric", "MetricContext", "NoiseSchedule", "Optimizer", "PluginLoadError", "Problem",
    "RecipeError", "RegistryError", "SampleSet", "SamplerLike", "__version__", "autoencoder",
    "build", "diffusion", "hookimpl", "int_at_least", "int_between", "non_negative_finite",
    "open_unit_interval", "option", "optional", "positive_finite", "positive_ints", "unit_interval",
]  # fmt: skip
