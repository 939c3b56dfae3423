"""The options of the ``unet`` backbone (:class:`UNetConfig`), their validators and the
recipe check (:func:`check_unet`); the module docstring of ``unet.py`` says what they mean.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from denoisekit import CheckContext, Problem
from denoisekit.config import (
    int_at_least,
    int_between,
    option,
    over_memory,
    positive_finite,
    positive_ints,
)

# --------------------------------------------------------------------------- validators


_positive_int = int_at_least(1)
_optional_positive_int = int_at_least(1, optional=True)
_bool = attrs.validators.instance_of(bool)


def _check_channels(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    _positive_int(inst, attribute, value)
    if value < 4:  # the sinusoidal time embedding has width `channels`: >= 2 frequencies
        raise ValueError(f"'channels' must be >= 4: {value}")


def _check_channel_mults(inst: Any, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    if len(value) == 0:
        raise ValueError("'channel_mults' must have at least one level: ()")
    positive_ints(inst, attribute, value)


def _check_image_size(inst: UNetConfig, attribute: attrs.Attribute, value: int) -> None:
    _positive_int(inst, attribute, value)
    factor = 2 ** (len(inst.channel_mults) - 1)
    if value % factor:
        raise ValueError(
            f"'image_size' must be divisible by 2**(len(channel_mults) - 1) = {factor} "
            f"(the network downsamples {len(inst.channel_mults) - 1} times): {value}"
        )


def _reachable(inst: UNetConfig) -> list[int]:
    return [inst.image_size // 2**i for i in range(len(inst.channel_mults))]


def _check_attention_resolutions(
    inst: UNetConfig, attribute: attrs.Attribute, value: tuple[int, ...]
) -> None:
    positive_ints(inst, attribute, value)
    reachable = _reachable(inst)
    for i, r in enumerate(value):
        if r not in reachable:
            raise ValueError(
                f"'attention_resolutions[{i}]' = {r} is not a resolution the network reaches; "
                f"with image_size {inst.image_size} and {len(inst.channel_mults)} levels "
                f"they are {reachable}"
            )


def _attention_widths(inst: UNetConfig) -> list[int]:
    """Channel widths of the levels that hold attention blocks (and the middle one)."""
    reachable = _reachable(inst)
    widths = [
        inst.channels * m
        for m, r in zip(inst.channel_mults, reachable, strict=True)
        if r in inst.attention_resolutions
    ]
    return [*widths, inst.channels * inst.channel_mults[-1]] if inst.mid_attention else widths


def _check_head_channels(inst: UNetConfig, attribute: attrs.Attribute, value: int | None) -> None:
    if value is None:
        return
    _positive_int(inst, attribute, value)
    for c in _attention_widths(inst):
        if c % value:
            raise ValueError(
                f"'head_channels' ({value}) must divide the width of every attention block; "
                f"{c} channels is not a multiple"
            )


def _check_num_heads(inst: UNetConfig, attribute: attrs.Attribute, value: int) -> None:
    _positive_int(inst, attribute, value)
    if inst.head_channels is not None:
        return  # head_channels overrides num_heads
    for c in _attention_widths(inst):
        if c % value:
            raise ValueError(
                f"'num_heads' ({value}) must divide the width of every attention block; "
                f"{c} channels do not split into {value} heads"
            )


def _check_dropout(inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"'dropout' must be in [0, 1): {value!r}")


def _check_groups(inst: UNetConfig, attribute: attrs.Attribute, value: int) -> None:
    _positive_int(inst, attribute, value)
    for c in (inst.channels, *(inst.channels * m for m in inst.channel_mults)):
        if c % value:
            raise ValueError(
                f"'groups' ({value}) must divide every GroupNorm width "
                f"(channels * channel_mults[i] and channels): {c} is not a multiple"
            )


# --------------------------------------------------------------------------- config


@attrs.frozen(kw_only=True)
class UNetConfig:
    """Options of the ``unet`` backbone (defaults: DDPM CIFAR-10, Ho et al. 2020)."""

    in_channels: int = option(3, "image channels in", validator=_positive_int)
    out_channels: int | None = option(
        None,
        "channels out; None = in_channels (runs need exactly in_channels: no learned variance)",
        validator=_optional_positive_int,
    )
    channels: int = option(128, "base channel width (>= 4)", validator=_check_channels)
    channel_mults: tuple[int, ...] = option(
        (1, 2, 2, 2),
        "width multiplier of each resolution level (one downsampling between levels)",
        converter=tuple,
        validator=_check_channel_mults,
    )
    num_res_blocks: int = option(2, "residual blocks per encoder level", validator=_positive_int)
    image_size: int = option(
        32,
        "training image height and width (places attention; must halve cleanly per level)",
        validator=_check_image_size,
    )
    attention_resolutions: tuple[int, ...] = option(
        (16,),
        "feature-map sizes that get self-attention blocks (the middle block: mid_attention)",
        converter=tuple,
        validator=_check_attention_resolutions,
    )
    head_channels: int | None = option(
        None,
        "channels per attention head; if set, overrides num_heads",
        validator=_check_head_channels,
    )
    num_heads: int = option(4, "attention heads per attention block", validator=_check_num_heads)
    dropout: float = option(
        0.1, "dropout rate in residual blocks, in [0, 1)", validator=_check_dropout
    )
    groups: int = option(32, "GroupNorm groups", validator=_check_groups)
    embedding: str = option(
        "additive",
        "how the time embedding enters residual blocks: additive (DDPM) or scale_shift (FiLM)",
        validator=attrs.validators.in_(("additive", "scale_shift")),
    )
    time_input: str = option(
        "timestep",
        "what t holds: timestep (in [0, T)) or log_snr (continuous noise level)",
        validator=attrs.validators.in_(("timestep", "log_snr")),
    )
    log_snr_scale: float = option(
        25.0,
        "log-SNR is multiplied by this before the sinusoidal embedding (time_input = log_snr)",
        validator=positive_finite,
    )
    num_classes: int | None = option(
        None,
        "classes for class conditioning (plus a null class for guidance); None = unconditional",
        validator=_optional_positive_int,
    )
    resample_with_conv: bool = option(
        True,
        "strided/3×3 convs for down/upsampling (else average pooling / plain nearest upsampling)",
        validator=_bool,
    )
    norm_eps: float = option(
        1e-5, "GroupNorm epsilon (diffusers' DDPM checkpoints: 1e-6)", validator=positive_finite
    )
    freq_shift: int | None = option(
        None,
        "time-embedding frequencies 10000**(-i / (half - freq_shift)) as diffusers computes "
        "them (0 or 1); None = DDPM's code (= 1 up to float32 rounding)",
        validator=int_between(0, 1, optional=True),
    )
    flip_sin_to_cos: bool = option(
        False, "time embedding as [cos, sin] instead of DDPM's [sin, cos]", validator=_bool
    )
    downsample_padding: str = option(
        "symmetric",
        "padding of the stride-2 downsampling conv: symmetric (1 pixel each side) or "
        "bottom_right (1 pixel after; DDPM's TF code, diffusers' downsample_padding = 0)",
        validator=attrs.validators.in_(("symmetric", "bottom_right")),
    )
    mid_attention: bool = option(
        True,
        "self-attention block in the middle (between its two residual blocks)",
        validator=_bool,
    )


# --------------------------------------------------------------------------- size


def unet_size(config: UNetConfig, **sizes: Any) -> tuple[int, int]:
    """``(parameters, activations)`` of the network, from the config alone (no tensor is
    made, so absurd widths cost nothing): the exact parameter count, and a lower bound on the
    floats one image's training forward keeps for the backward (each block's input and
    intermediate maps; not the attention matrices, which a fused kernel may never form).
    ``sizes`` replace the config's ``channels``, ``channel_mults``, ``num_res_blocks`` or
    ``image_size``."""
    ch = sizes.get("channels", config.channels)
    mults = sizes.get("channel_mults", config.channel_mults)
    blocks = sizes.get("num_res_blocks", config.num_res_blocks)
    emb, film = 4 * ch, 2 if config.embedding == "scale_shift" else 1
    acts = 0

    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k + c_out

    def res(c_in: int, c_out: int, r: int) -> int:
        nonlocal acts
        acts += 3 * (c_in + c_out) * r * r
        skip = conv(c_in, c_out, 1) if c_in != c_out else 0
        norms = 2 * c_in + 2 * c_out
        return (
            norms + conv(c_in, c_out, 3) + conv(emb, film * c_out, 1) + conv(c_out, c_out, 3) + skip
        )

    def attn(c: int, r: int) -> int:
        nonlocal acts
        acts += 6 * c * r * r
        return 2 * c + conv(c, 3 * c, 1) + conv(c, c, 1)

    def block(c_in: int, c_out: int, r: int, times: int = 1) -> int:
        nonlocal acts
        before = acts
        n = res(c_in, c_out, r) + (attn(c_out, r) if r in config.attention_resolutions else 0)
        acts += (acts - before) * (times - 1)
        return n * times

    # The blocks of a level after its first are alike: counted with a multiplicity, so an
    # absurd num_res_blocks costs no time either.
    resample = config.resample_with_conv
    n = conv(ch, emb, 1) + conv(emb, emb, 1)  # the time MLP (Linear = 1×1 conv)
    n += (config.num_classes + 1) * emb if config.num_classes is not None else 0
    n += conv(config.in_channels, ch, 3)
    widths = [ch * m for m in mults]
    c, r = ch, sizes.get("image_size", config.image_size)
    for level, width in enumerate(widths):
        n += block(c, width, r) + block(width, width, r, blocks - 1)
        c = width
        if level != len(widths) - 1:
            n, acts, r = n + (conv(c, c, 3) if resample else 0), acts + c * r * r, r // 2
    n += res(c, c, r) + (attn(c, r) if config.mid_attention else 0) + res(c, c, r)
    # Decoder level l: its first block takes the level below's output and a skip of width
    # c_l, then blocks - 1 take 2 c_l, and the last one the skip of the level above (or of
    # conv_in at level 0).
    for level in reversed(range(len(widths))):
        width, above = widths[level], widths[level - 1] if level else ch
        n += block(c + width, width, r) + block(2 * width, width, r, blocks - 1)
        n += block(width + above, width, r)
        c = width
        if level != 0:
            r *= 2
            n, acts = n + (conv(c, c, 3) if resample else 0), acts + 2 * c * r * r
    n += 2 * c + conv(c, config.out_channels or config.in_channels, 3)
    return n, acts


#: Options that size the network, with a value far up the range published models use
#: (ADM's ImageNet-512 U-Net: width 256, multipliers up to 4, 3 blocks per level).
SIZING = {"channels": 512, "channel_mults": 8, "num_res_blocks": 4, "image_size": 1024}


def unet_facts(config: UNetConfig) -> dict[str, int]:
    """``num_parameters`` and ``activation_bytes`` (per image, float32; a lower bound)."""
    parameters, activations = unet_size(config)
    return {"num_parameters": parameters, "activation_bytes": 4 * activations}


def largest_size_key(config: UNetConfig, which: int) -> str:
    """The sizing option (``channel_mults[i]``: one level's) whose value, brought down to the
    top of the published range (:data:`SIZING`), shrinks ``unet_size(config)[which]`` most."""

    def shrunk(key: str) -> int:
        if key.startswith("channel_mults["):
            i = int(key[len("channel_mults[") : -1])
            mults = list(config.channel_mults)
            mults[i] = min(mults[i], SIZING["channel_mults"])
            return unet_size(config, channel_mults=tuple(mults))[which]
        value = min(getattr(config, key), SIZING[key])
        return unet_size(config, **{key: value})[which]

    keys = ["channels", "num_res_blocks", "image_size"]
    keys += [f"channel_mults[{i}]" for i in range(len(config.channel_mults))]
    return min(keys, key=shrunk)


def weights_over_memory(config: UNetConfig) -> tuple[str, str] | None:
    """``(option, message)`` when the float32 weights alone exceed the memory limit, naming
    the sizing option most to blame (:func:`largest_size_key`); else ``None``."""
    parameters, _ = unet_size(config)
    problem = over_memory(4 * parameters, f"storing {parameters:.3g} parameters (float32)")
    return None if problem is None else (largest_size_key(config, 0), problem)


def check_unet(config: UNetConfig, context: CheckContext) -> Iterator[Problem]:
    """In a run: one output per input value, and an embedding row for every data label; the
    weights fit in memory (the core checks a training batch with :func:`unet_facts`)."""
    found = weights_over_memory(config)
    if found is not None:
        key, problem = found
        yield (key.split("[")[0], f"{problem}; lower {context.table}.{key}")
    inpainting = context.recipe.inpainting.enabled  # the core checks its channels
    if config.out_channels not in (None, config.in_channels) and not inpainting:
        yield (
            "out_channels",
            f"{config.out_channels} output channels for {config.in_channels} input channels: "
            "a run's denoiser needs one prediction per input value; leave it unset",
        )
    classes = context.fact("data", "num_classes")
    if config.num_classes is not None and classes is not None and classes > config.num_classes:
        yield (
            "num_classes",
            f"the data has {classes} classes but the unet embeds {config.num_classes}; set "
            f"{context.table}.num_classes = {classes}",
        )
