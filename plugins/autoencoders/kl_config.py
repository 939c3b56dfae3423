"""The options of the ``kl`` autoencoder (:class:`KLConfig`), its facts and its recipe
check; the module docstring of ``kl.py`` says what it is."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from denoisekit import CheckContext, Problem
from denoisekit.config import int_at_least, option, positive_ints

_positive_int = int_at_least(1)
_bool = attrs.validators.instance_of(bool)


def _check_block_channels(inst: Any, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    if len(value) == 0:
        raise ValueError("'block_channels' must have at least one level: ()")
    positive_ints(inst, attribute, value)


def _check_groups(inst: KLConfig, attribute: attrs.Attribute, value: int) -> None:
    _positive_int(inst, attribute, value)
    for c in inst.block_channels:
        if c % value:
            raise ValueError(
                f"'groups' ({value}) must divide every width of block_channels: {c} is not "
                "a multiple"
            )


@attrs.frozen(kw_only=True)
class KLConfig:
    """Options of the ``kl`` autoencoder (defaults: LDM's kl-f4)."""

    in_channels: int = option(3, "image channels (in and out)", validator=_positive_int)
    block_channels: tuple[int, ...] = option(
        (128, 256, 512),
        "width of each resolution level; one 2× downsampling between levels, so the latent "
        "grid is 2**(len - 1) times smaller per side",
        converter=tuple,
        validator=_check_block_channels,
    )
    num_res_blocks: int = option(
        2, "residual blocks per encoder level (the decoder has one more)", validator=_positive_int
    )
    latent_channels: int = option(3, "channels of the latent grid", validator=_positive_int)
    groups: int = option(32, "GroupNorm groups (divides every width)", validator=_check_groups)
    mid_attention: bool = option(
        True, "self-attention in the middle, at the lowest resolution", validator=_bool
    )
    quant_conv: bool = option(
        True, "1×1 conv on the posterior's moments (diffusers' use_quant_conv)", validator=_bool
    )
    post_quant_conv: bool = option(
        True, "1×1 conv on the latents before decoding (use_post_quant_conv)", validator=_bool
    )


def kl_facts(config: KLConfig) -> dict[str, Any]:
    """The latent channels and the downsampling factor, for the other components' checks."""
    factor = 2 ** (len(config.block_channels) - 1)
    return {"latent_channels": config.latent_channels, "downsample_factor": factor}


def check_kl(config: KLConfig, context: CheckContext) -> Iterator[Problem]:
    """The data's images have ``in_channels`` and sides the factor divides."""
    shape = context.fact("data", "image_shape")
    if shape is None:
        return
    c, h, w = shape
    if c != config.in_channels:
        yield (
            "in_channels",
            f"the data gives {c}×{h}×{w} images; set {context.table}.in_channels = {c}",
        )
    factor = kl_facts(config)["downsample_factor"]
    if h % factor or w % factor:
        yield (
            "block_channels",
            f"{len(config.block_channels)} levels downsample by {factor}, which does not divide "
            f"the data's {h}×{w} images; use fewer levels or resize the images",
        )
