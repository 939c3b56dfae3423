"""denoisekit: a modular, plugin-based framework for denoising diffusion models.

The public plugin API, everything a plugin author imports (see docs/writing-a-plugin.md):

* :data:`hookimpl`, the marker of hook implementations, and :class:`ComponentSpec`, the
  record the ``denoisekit_components`` hook returns;
* load-time recipe checks: a component's ``facts`` and ``check``, which see a
  :class:`CheckContext` and return :data:`Problem` pairs (:data:`FACTS` lists the known facts);
* the contracts as :class:`typing.Protocol` classes (:class:`Backbone`,
  :class:`NoiseSchedule`, :class:`Loss`, :class:`SamplerLike`, :class:`DenoiserLike`,
  :class:`DataLike`, :class:`Metric`), the kinds (:data:`KINDS`) and the build context of
  each kind (:data:`BUILD_CONTEXT`);
* config helpers: :func:`option` (a field with a default and a one-line doc),
  :func:`option_doc` and the validators :func:`unit_interval`, :func:`open_unit_interval`,
  :func:`int_at_least`, :func:`int_between` (:data:`MAX_TIMESTEPS` bounds schedules),
  :func:`positive_finite`, :func:`non_negative_finite` and
  :func:`positive_ints`;
* :class:`Denoiser` (backbone + schedule + prediction type → ``(eps, x0)``),
  :class:`DiscreteSchedule` and the forward-process math module :mod:`diffusion`;
* the user-facing errors (:class:`DenoisekitError` and its kinds).

``Denoiser``, ``DiscreteSchedule``, ``PREDICTION_TYPES`` and ``diffusion`` import torch,
so they are loaded on first access: ``import denoisekit`` itself stays light.
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
    option_doc,
    positive_finite,
    positive_ints,
    unit_interval,
)
from denoisekit.contracts import (
    BUILD_CONTEXT,
    FACTS,
    KINDS,
    PROBE_KINDS,
    Backbone,
    CheckContext,
    ComponentSpec,
    DataLike,
    DenoiserLike,
    Loss,
    Metric,
    NoiseSchedule,
    Problem,
    SamplerLike,
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
    from denoisekit import diffusion
    from denoisekit.denoiser import PREDICTION_TYPES, Denoiser
    from denoisekit.diffusion import DiscreteSchedule

__version__ = "0.1.0"

#: Marker for hook implementations: ``@denoisekit.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)

# name → (module, attribute or None for the module itself), imported on first access.
_LAZY: dict[str, tuple[str, str | None]] = {
    "Denoiser": ("denoisekit.denoiser", "Denoiser"),
    "PREDICTION_TYPES": ("denoisekit.denoiser", "PREDICTION_TYPES"),
    "DiscreteSchedule": ("denoisekit.diffusion", "DiscreteSchedule"),
    "diffusion": ("denoisekit.diffusion", None),
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
    "BUILD_CONTEXT",
    "FACTS",
    "KINDS",
    "MAX_TIMESTEPS",
    "PREDICTION_TYPES",
    "PROBE_KINDS",
    "Backbone",
    "CheckContext",
    "CheckpointError",
    "ComponentError",
    "ComponentSpec",
    "DataError",
    "DataLike",
    "DenoisekitError",
    "Denoiser",
    "DenoiserLike",
    "DiscreteSchedule",
    "Loss",
    "Metric",
    "NoiseSchedule",
    "PluginLoadError",
    "Problem",
    "RecipeError",
    "RegistryError",
    "SamplerLike",
    "__version__",
    "diffusion",
    "hookimpl",
    "int_at_least",
    "int_between",
    "non_negative_finite",
    "open_unit_interval",
    "option",
    "option_doc",
    "positive_finite",
    "positive_ints",
    "unit_interval",
]
