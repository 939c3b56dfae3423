"""The attention U-Net backbone of DDPM (Ho et al. 2020), with improved-diffusion options.

Registered as backbone ``"unet"``. The defaults are the DDPM CIFAR-10 network (35.7M
parameters): base width 128, multipliers (1, 2, 2, 2), two residual blocks per level,
self-attention at 16×16, dropout 0.1, additive time embedding.

Options beyond DDPM:

- ``embedding = "scale_shift"``: the embedding modulates the second GroupNorm of each
  residual block (FiLM), as improved-diffusion's ``use_scale_shift_norm`` (Nichol &
  Dhariwal 2021, sec. 3 / Dhariwal & Nichol 2021, "adaptive group normalization").
- ``time_input = "log_snr"``: the network is conditioned on the log signal-to-noise ratio
  ``lambda = log(alpha_bar / (1 - alpha_bar))`` instead of the timestep (as in VDM, Kingma
  et al. 2021), so it can be queried at any noise level of any schedule.
- ``num_classes``: class conditioning through an embedding table with one extra row, the
  null class (label ``-1`` or ``cond=None``), for classifier-free guidance (Ho & Salimans 2022).
- ``num_heads`` / ``head_channels``: multi-head attention (improved-diffusion).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import torch
from torch import nn

from denoisekit import CheckContext, ComponentSpec, Problem, hookimpl
from denoisekit.config import int_at_least, option, positive_ints
from denoisekit.plugins.backbones.unet_layers import (
    AttentionBlock,
    Downsample,
    ResAttnBlock,
    ResBlock,
    SinusoidalEmbedding,
    Upsample,
)

#: log-SNR values are clamped to ±this before embedding (``t = 0`` of a continuous schedule
#: has ``lambda = +inf``; sinusoids of inf are NaN).
LOG_SNR_CLAMP = 50.0

# --------------------------------------------------------------------------- validators


_positive_int = int_at_least(1)
_optional_positive_int = int_at_least(1, optional=True)


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
    """Channel widths of the levels that hold attention blocks (the middle block always)."""
    reachable = _reachable(inst)
    widths = [
        inst.channels * m
        for m, r in zip(inst.channel_mults, reachable, strict=True)
        if r in inst.attention_resolutions
    ]
    return [*widths, inst.channels * inst.channel_mults[-1]]


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


def _check_log_snr_scale(inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"'log_snr_scale' must be > 0: {value!r}")


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
        "feature-map sizes that get self-attention blocks (the middle block always has one)",
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
        validator=_check_log_snr_scale,
    )
    num_classes: int | None = option(
        None,
        "classes for class conditioning (plus a null class for guidance); None = unconditional",
        validator=_optional_positive_int,
    )
    resample_with_conv: bool = option(
        True,
        "strided/3×3 convs for down/upsampling (else average pooling / plain nearest upsampling)",
        validator=attrs.validators.instance_of(bool),
    )


# --------------------------------------------------------------------------- module


class UNet(nn.Module):
    """The DDPM attention U-Net: ``forward(x_t, t, cond=None)`` → ``(B, out_channels, H, W)``.

    Attributes:
        config: the :class:`UNetConfig` it was built from.
        time_input: ``"timestep"`` or ``"log_snr"``: what ``t`` holds.
        num_classes: number of classes for conditioning, or ``None``.
        out_channels: channels of the output.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.time_input = config.time_input
        self.num_classes = config.num_classes
        self.out_channels = config.out_channels or config.in_channels
        ch = config.channels
        emb_ch = 4 * ch
        mults = config.channel_mults
        num_levels = len(mults)
        scale_shift = config.embedding == "scale_shift"
        self._size_factor = 2 ** (num_levels - 1)

        def heads(width: int) -> int:
            if config.head_channels is not None:
                return width // config.head_channels
            return config.num_heads

        def res_attn(c_in: int, c_out: int, attn: bool) -> ResAttnBlock:
            res = ResBlock(
                c_in,
                c_out,
                emb_ch,
                groups=config.groups,
                dropout=config.dropout,
                scale_shift=scale_shift,
            )
            block = (
                AttentionBlock(c_out, num_heads=heads(c_out), groups=config.groups)
                if attn
                else None
            )
            return ResAttnBlock(res, block)

        # 1. Time (and class) embedding: sinusoids of width ch → MLP to 4·ch (DDPM).
        self.time_embed = SinusoidalEmbedding(ch)
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        # Row num_classes is the null class (classifier-free guidance).
        self.class_embed = (
            nn.Embedding(config.num_classes + 1, emb_ch) if config.num_classes is not None else None
        )

        # 2. Encoder: num_res_blocks blocks per level, downsampling between levels.
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skip_widths = [ch]
        c, res = ch, config.image_size
        for level, mult in enumerate(mults):
            for _ in range(config.num_res_blocks):
                self.down.append(res_attn(c, ch * mult, res in config.attention_resolutions))
                c = ch * mult
                skip_widths.append(c)
            if level != num_levels - 1:
                self.down.append(Downsample(c, with_conv=config.resample_with_conv))
                skip_widths.append(c)
                res //= 2

        # 3. Middle: res - attention - res.
        self.mid = res_attn(c, c, True)
        self.mid_res = ResBlock(
            c, c, emb_ch, groups=config.groups, dropout=config.dropout, scale_shift=scale_shift
        )

        # 4. Decoder: num_res_blocks + 1 blocks per level, each taking one skip connection.
        self.up = nn.ModuleList()
        for level in reversed(range(num_levels)):
            for i in range(config.num_res_blocks + 1):
                c_in = c + skip_widths.pop()
                c = ch * mults[level]
                block = res_attn(c_in, c, res in config.attention_resolutions)
                if level != 0 and i == config.num_res_blocks:
                    block = _UpLevelEnd(block, Upsample(c, with_conv=config.resample_with_conv))
                self.up.append(block)
            res *= 2

        # 5. Output head: GN - SiLU - conv, zero-initialised (the net starts by predicting 0).
        self.norm_out = nn.GroupNorm(config.groups, c)
        self.act_out = nn.SiLU()
        self.conv_out = nn.Conv2d(c, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def embed(self, t: torch.Tensor, batch: int, cond: torch.Tensor | None) -> torch.Tensor:
        """The ``(B, 4·channels)`` conditioning vector from ``t`` (and class labels)."""
        t = t.reshape(-1).expand(batch)  # a scalar t broadcasts over the batch
        if self.time_input == "log_snr":
            t = t.float().clamp(-LOG_SNR_CLAMP, LOG_SNR_CLAMP) * self.config.log_snr_scale
        emb = self.time_embed(t).to(self.time_mlp[0].weight.dtype)
        emb = self.time_mlp(emb)
        if self.class_embed is not None:
            null = self.num_classes
            if cond is None:
                labels = torch.full((batch,), null, dtype=torch.long, device=emb.device)
            else:
                labels = cond.reshape(-1).long()
                labels = labels.masked_fill(labels < 0, null)
            emb = emb + self.class_embed(labels)
        elif cond is not None:
            raise ValueError(
                "this unet is unconditional (num_classes = None) but got class labels (cond)"
            )
        return emb

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict from noisy images ``x_t`` (B, C, H, W) at noise levels ``t`` (B,).

        Args:
            x_t: noisy images.
            t: float timesteps (possibly fractional), or log-SNR values when
                ``time_input == "log_snr"``.
            cond: integer class labels (B,) for a class-conditional net; ``-1`` or ``None``
                selects the null class.

        Returns:
            A tensor of shape ``(B, out_channels, H, W)``.
        """
        factor = self._size_factor
        if x_t.shape[-2] % factor or x_t.shape[-1] % factor:
            raise ValueError(
                f"image size {tuple(x_t.shape[-2:])} must be divisible by {factor}: "
                f"the unet downsamples {len(self.config.channel_mults) - 1} times"
            )
        emb = self.embed(t, x_t.shape[0], cond)
        h = self.conv_in(x_t)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.mid_res(self.mid(h, emb), emb)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(self.act_out(self.norm_out(h)))


class _UpLevelEnd(nn.Module):
    """The last decoder block of a level followed by the upsampler."""

    def __init__(self, block: ResAttnBlock, upsample: Upsample) -> None:
        super().__init__()
        self.block = block
        self.upsample = upsample

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.block(x, emb))


def check_unet(config: UNetConfig, context: CheckContext) -> Iterator[Problem]:
    """In a run: one output per input value, and an embedding row for every data label."""
    if config.out_channels not in (None, config.in_channels):
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


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            kind="backbone",
            name="unet",
            config=UNetConfig,
            build=UNet,
            check=check_unet,
            summary="DDPM attention U-Net (scale-shift / log-SNR / class-conditional options)",
            # A tiny instance whose output shape the registry checks on a probe input.
            probe={
                "in_channels": 1,
                "image_size": 8,
                "channels": 8,
                "channel_mults": (1, 2),
                "num_res_blocks": 1,
                "attention_resolutions": (4,),
                "groups": 4,
                "num_heads": 1,
            },
        )
    ]
