"""denoisekit: a modular, plugin-based framework for denoising diffusion models.

The public plugin API: :data:`hookimpl` (the marker plugin authors use),
:class:`ComponentSpec` (what a registration hook returns) and the contracts in
:mod:`denoisekit.components`.
"""

from __future__ import annotations

import pluggy

from denoisekit.components import (
    KINDS,
    Backbone,
    ComponentSpec,
    DataLike,
    DenoiserLike,
    Loss,
    Metric,
    NoiseSchedule,
    SamplerLike,
)
from denoisekit.hookspecs import PROJECT

__version__ = "0.1.0"

#: Marker for hook implementations: ``@denoisekit.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = [
    "KINDS",
    "Backbone",
    "ComponentSpec",
    "DataLike",
    "DenoiserLike",
    "Loss",
    "Metric",
    "NoiseSchedule",
    "SamplerLike",
    "__version__",
    "hookimpl",
]
