"""denoisekit: a modular, plugin-based framework for denoising diffusion models.

The public plugin API (see docs/writing-a-plugin.md): :data:`hookimpl`, :class:`ComponentSpec`,
the kinds and their contracts, config helpers and validators, :class:`Denoiser`,
:class:`DiscreteSchedule` and :mod:`diffusion`, the user-facing errors, and :func:`build`
(``denoisekit.build("sampler", "ddim", steps=20)``) and :func:`load_registry` (every
registered component). The names in ``_LAZY`` import torch or the host, so they are loaded
on first access: ``import denoisekit`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

from denoisekit.config import (
    DOC_KEY,
    MAX_TIMESTEPS,
    finite_number,
    int_at_least,
    int_between,
    memory_limit,
    non_negative_finite,
    open_unit_interval,
    option,
    over_memory,
    positive_finite,
    positive_ints,
    unit_interval,
)
from denoisekit.contracts import (
    BUILD_CONTEXT,
    FACTS,
    KIND_RECORDS,
    KINDS,
    NULL_CLASS,
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
from denoisekit.deprecation import DenoisekitDeprecationWarning, MovedModules, module_getattr
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
    from denoisekit.autoencoder import DiagonalGaussian
    from denoisekit.denoiser import PREDICTION_TYPES, Denoiser
    from denoisekit.diffusion import DiscreteSchedule
    from denoisekit.host.build import build
    from denoisekit.host.registry import load_registry

#: The package version (semantic versioning; pyproject.toml reads it from here). Before
#: 1.0 a minor release may change the plugin API: CHANGELOG.md says what changed.
__version__ = "0.2.0"
#: The plugin API's version (major, minor): the major number grows when a plugin written
#: for the previous one may break (a contract, hook or public name changed incompatibly),
#: the minor when the API only gains. 1.0 was denoisekit 0.1; see docs/writing-a-plugin.md.
PLUGIN_API_VERSION: tuple[int, int] = (2, 0)

#: Marker for hook implementations: ``@denoisekit.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)

# name → (module, attribute or None for the module itself), imported on first access.
_LAZY: dict[str, tuple[str, str | None]] = {
    "Denoiser": ("denoisekit.denoiser", "Denoiser"),
    "PREDICTION_TYPES": ("denoisekit.denoiser", "PREDICTION_TYPES"),
    "DiscreteSchedule": ("denoisekit.diffusion", "DiscreteSchedule"),
    "diffusion": ("denoisekit.diffusion", None),
    "DiagonalGaussian": ("denoisekit.autoencoder", "DiagonalGaussian"),
    "build": ("denoisekit.host.build", "build"),  # the API's references to the host
    "load_registry": ("denoisekit.host.registry", "load_registry"),
}


#: Modules 0.2.0 moved: their old paths import until 0.3.0, with a warning.
MOVED_MODULES: dict[str, str] = {
    "denoisekit.components": "denoisekit.contracts",
    "denoisekit.registry": "denoisekit.host.registry",
    "denoisekit.plugin_manager": "denoisekit.host.plugin_manager",
}
MovedModules(MOVED_MODULES).install()
# Names 0.2.0 removed from the package root, answered until 0.3.0 with a warning.
_removed = module_getattr("denoisekit", {"option_doc": (
    lambda field: field.metadata.get(DOC_KEY, ""), "use field.metadata[denoisekit.config.DOC_KEY]"
)})  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attribute is None else getattr(module, attribute)
        globals()[name] = value
        return value
    return _removed(name, stacklevel=4)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "BUILD_CONTEXT", "FACTS", "KINDS", "KIND_RECORDS", "MAX_TIMESTEPS", "NULL_CLASS",
    "PLUGIN_API_VERSION", "PREDICTION_TYPES", "PROBE_KINDS", "Autoencoder", "Backbone",
    "BackboneConfig", "CheckContext", "CheckpointError", "ComponentError", "ComponentSpec",
    "DataError", "DataLike", "DenoisekitDeprecationWarning", "DenoisekitError", "Denoiser",
    "DenoiserLike", "DiagonalGaussian", "DiscreteSchedule", "Hook", "Kind", "LRSchedule", "Loss",
    "Metric", "MetricContext", "NoiseSchedule", "Optimizer", "PluginLoadError", "Problem",
    "RecipeError", "RegistryError", "SampleSet", "SamplerLike", "__version__", "build", "diffusion",
    "finite_number", "hookimpl", "int_at_least", "int_between", "load_registry", "memory_limit",
    "non_negative_finite", "open_unit_interval", "option", "optional", "over_memory",
    "positive_finite", "positive_ints", "unit_interval",
]  # fmt: skip
