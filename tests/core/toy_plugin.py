"""Small components for testing the core without the built-in plugins."""

from __future__ import annotations

import attrs

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import option, positive_ints


@attrs.frozen(kw_only=True)
class ToyNetConfig:
    channels: int = option(8, "base channels", validator=attrs.validators.gt(0))
    channel_mults: tuple[int, ...] = option((1, 2), "multipliers", validator=positive_ints)
    dropout: float | None = option(None, "dropout")


@attrs.frozen(kw_only=True)
class ToySamplerConfig:
    steps: int = option(10, "steps", validator=attrs.validators.gt(0))
    eta: float = option(0.0, "eta", validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)])
    spacing: str = option(
        "leading", "spacing", validator=attrs.validators.in_(("leading", "trailing"))
    )


@attrs.frozen(kw_only=True)
class EmptyConfig:
    pass


@attrs.frozen(kw_only=True)
class ToyDataConfig:
    path: str = option("data", "folder")
    size: int = option(8, "size")


def _build(config, **context):
    return ("built", config, context)


SPECS = [
    ComponentSpec(kind="backbone", name="toynet", config=ToyNetConfig, build=_build, summary="toy"),
    ComponentSpec(kind="sampler", name="toysampler", config=ToySamplerConfig, build=_build),
    ComponentSpec(kind="sampler", name="toysampler2", config=ToySamplerConfig, build=_build),
    ComponentSpec(kind="data", name="toydata", config=ToyDataConfig, build=_build),
    ComponentSpec(kind="schedule", name="cosine", config=EmptyConfig, build=_build),
    ComponentSpec(kind="loss", name="mse", config=EmptyConfig, build=_build),
    ComponentSpec(kind="optimizer", name="adamw", config=EmptyConfig, build=_build),
    ComponentSpec(kind="lr_schedule", name="constant", config=EmptyConfig, build=_build),
    ComponentSpec(kind="hook", name="ema", config=ToySamplerConfig, build=_build),
]


@hookimpl
def denoisekit_components():
    return SPECS
