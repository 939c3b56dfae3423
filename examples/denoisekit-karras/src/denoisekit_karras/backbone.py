"""``tinyconv``: a small residual ConvNet with a time embedding, for small images.

No down-sampling: ``num_blocks`` residual blocks at full resolution (GroupNorm, SiLU, 3×3
convolutions), each modulated by the time embedding through a scale and a shift of its
second normalization (FiLM; "adaptive group normalization" in Dhariwal & Nichol 2021).
The time embedding is DDPM's: sinusoids of the timestep (Vaswani et al. 2017, as in Ho et
al. 2020) through a two-layer MLP. The output convolution starts at zero, so the untrained
network predicts 0 (a common choice that steadies early training).

Made for the bundled 8×8 digits: with the defaults the receptive field (17×17) covers the
whole image and a training step takes milliseconds on a CPU.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from denoisekit import ComponentSpec, int_at_least, option
from torch import nn

_positive_int = int_at_least(1)


def _even_positive_int(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    _positive_int(inst, attribute, value)
    if value % 2:
        raise ValueError(f"'{attribute.name}' must be even (sines and cosines): {value}")


def _groups_divide_channels(inst: TinyConvConfig, attribute: attrs.Attribute, value: Any) -> None:
    _positive_int(inst, attribute, value)
    if inst.channels % value:
        raise ValueError(f"'groups' ({value}) must divide 'channels' ({inst.channels})")


@attrs.frozen(kw_only=True)
class TinyConvConfig:
    """Options of the ``tinyconv`` backbone."""

    in_channels: int = option(1, "image channels", validator=int_at_least(1))
    image_size: int = option(
        8, "image height and width (the network is fully convolutional)", validator=int_at_least(1)
    )
    channels: int = option(32, "feature channels of every block", validator=int_at_least(1))
    num_blocks: int = option(3, "residual blocks", validator=int_at_least(1))
    embed_dim: int = option(64, "width of the time embedding", validator=_even_positive_int)
    groups: int = option(
        8, "GroupNorm groups (must divide channels)", validator=_groups_divide_channels
    )


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoids of ``t`` ``(B,)``: ``[sin(t w_k), cos(t w_k)]``, ``w_k = 10000^(-k/half)``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """``x + conv(silu(norm(conv(silu(norm(x)))) · (1 + scale) + shift))``."""

    def __init__(self, channels: int, embed_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(embed_dim, 2 * channels)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(nn.functional.silu(h))


class TinyConvNet(nn.Module):
    """The ``tinyconv`` backbone: ``(x_t, t, cond=None) -> eps`` (or x0 / v) of x_t's shape.

    Unconditional: passing class labels is an error.
    """

    time_input = "timestep"
    num_classes = None

    def __init__(self, config: TinyConvConfig) -> None:
        super().__init__()
        self.config = config
        c, e = config.channels, config.embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e), nn.SiLU())
        self.conv_in = nn.Conv2d(config.in_channels, c, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(c, e, config.groups) for _ in range(config.num_blocks))
        self.norm_out = nn.GroupNorm(config.groups, c)
        self.conv_out = nn.Conv2d(c, config.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: ``x_t`` ``(B, C, H, W)``; ``t`` timesteps ``(B,)`` as floats; no ``cond``."""
        if cond is not None:
            raise ValueError("tinyconv is unconditional: it takes no class labels (cond)")
        emb = self.time_mlp(timestep_embedding(t, self.config.embed_dim).to(x_t.dtype))
        h = self.conv_in(x_t)
        for block in self.blocks:
            h = block(h, emb)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


def build_tinyconv(config: TinyConvConfig) -> TinyConvNet:
    """Build the ``tinyconv`` backbone."""
    return TinyConvNet(config)


SPECS: list[ComponentSpec] = [
    ComponentSpec(
        kind="backbone",
        name="tinyconv",
        config=TinyConvConfig,
        build=build_tinyconv,
        summary="small residual ConvNet with a FiLM time embedding (for 8x8 digits)",
        # Built small and run on a probe input when the registry is built: a few ms.
        probe={"channels": 8, "num_blocks": 1, "embed_dim": 8, "groups": 2, "image_size": 4},
    )
]
