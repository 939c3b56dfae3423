"""The KL autoencoder network (:class:`KLAutoencoder`): the encoder-decoder of latent
diffusion (Rombach et al. 2022, appendix G; CompVis ``ldm/modules/diffusionmodules/model.py``)
in the module layout of diffusers' ``AutoencoderKL``, so that its state dict has diffusers'
parameter names and shapes (``plugins/autoencoders/diffusers_kl.py`` converts the configs).

Encoder: ``conv_in``; per level ``num_res_blocks`` residual blocks (GroupNorm, SiLU, 3×3
conv, twice) and, between levels, a stride-2 3×3 conv after one pixel of zero padding at
the bottom and right; the middle (residual, optional single-head self-attention,
residual); GroupNorm, SiLU, ``conv_out`` to the posterior's moments (mean and log-variance,
``2 * latent_channels``); ``quant_conv`` (1×1). Decoder: ``post_quant_conv`` (1×1),
``conv_in``, the middle, per level from the lowest resolution ``num_res_blocks + 1``
residual blocks and, between levels, nearest 2× upsampling and a 3×3 conv; GroupNorm, SiLU,
``conv_out``. GroupNorm epsilon 1e-6, as both.

*Notation*: ``B`` batch, ``C`` channels, ``L = h*w`` tokens of the attention.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from denoisekit.autoencoder import DiagonalGaussian
from denoisekit.diffusion import GeneratorArg

#: GroupNorm epsilon of LDM's and diffusers' autoencoders.
NORM_EPS = 1e-6


class ResnetBlock(nn.Module):
    """``x + conv2(silu(norm2(conv1(silu(norm1(x))))))``; a 1×1 ``conv_shortcut`` when the
    width changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=NORM_EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Attention(nn.Module):
    """Single-head self-attention over the ``h*w`` positions, with a residual connection:
    ``x + to_out(softmax(q kᵀ / √C) v)`` on ``group_norm(x)`` (LDM's ``AttnBlock``)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # diffusers' to_out.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, L, C)
        q, k, v = (proj(h).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out = self.to_out[0](out).transpose(1, 2).reshape(B, C, H, W)
        return x + out


class MidBlock(nn.Module):
    """Residual block, optional attention, residual block, at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([Attention(channels, groups)] if attention else [])
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class Resample(nn.Module):
    """``down``: zero-pad one pixel at the bottom and right, then a stride-2 3×3 conv
    (LDM's ``Downsample``; halves even sides exactly). Else nearest 2× upsampling, then a
    3×3 conv."""

    def __init__(self, channels: int, *, down: bool) -> None:
        super().__init__()
        self.down = down
        stride, padding = (2, 0) if down else (1, 1)
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: residual blocks, then an optional resampling (diffusers'
    ``DownEncoderBlock2D``/``UpDecoderBlock2D``: ``downsamplers.0`` / ``upsamplers.0``)."""

    def __init__(
        self, in_channels: int, out_channels: int, blocks: int, groups: int, resample: str | None
    ) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * blocks
        self.resnets = nn.ModuleList(
            ResnetBlock(a, b, groups) for a, b in itertools.pairwise(widths)
        )
        sampler = nn.ModuleList([Resample(out_channels, down=resample == "down")])
        if resample == "down":
            self.downsamplers = sampler
        elif resample == "up":
            self.upsamplers = sampler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resnets:
            x = block(x)
        for resample in getattr(self, "downsamplers", getattr(self, "upsamplers", ())):
            x = resample(x)
        return x


def _out(channels: int, out_channels: int, groups: int) -> tuple[nn.Module, nn.Module]:
    """The output's GroupNorm and 3×3 conv (``conv_norm_out``, ``conv_out``)."""
    norm = nn.GroupNorm(groups, channels, eps=NORM_EPS)
    return norm, nn.Conv2d(channels, out_channels, 3, padding=1)


class Encoder(nn.Module):
    """Images ``(B, in_channels, H, W)`` → moments ``(B, 2 * latent_channels, H/f, W/f)``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        ch, last = config.block_channels, len(config.block_channels) - 1
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            Level(ch[max(i - 1, 0)], c, config.num_res_blocks, config.groups,
                  "down" if i < last else None)
            for i, c in enumerate(ch)
        )  # fmt: skip
        self.mid_block = MidBlock(ch[-1], config.groups, config.mid_attention)
        self.conv_norm_out, self.conv_out = _out(ch[-1], 2 * config.latent_channels, config.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down_blocks:
            h = level(h)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class Decoder(nn.Module):
    """Latents ``(B, latent_channels, h, w)`` → images ``(B, in_channels, h*f, w*f)``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        ch, last = config.block_channels[::-1], len(config.block_channels) - 1
        self.conv_in = nn.Conv2d(config.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], config.groups, config.mid_attention)
        self.up_blocks = nn.ModuleList(
            Level(ch[max(i - 1, 0)], c, config.num_res_blocks + 1, config.groups,
                  "up" if i < last else None)
            for i, c in enumerate(ch)
        )  # fmt: skip
        self.conv_norm_out, self.conv_out = _out(ch[-1], config.in_channels, config.groups)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class KLAutoencoder(nn.Module):
    """The ``kl`` autoencoder: ``encode`` → :class:`~denoisekit.DiagonalGaussian`,
    ``decode``, ``latent_shape``, and the ``shift``/``scale`` buffers (zeros and ones until
    :func:`denoisekit.engine.latents.calibrate` measures them)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.in_channels = config.in_channels
        self.latent_channels = L = config.latent_channels
        self.downsample_factor = 2 ** (len(config.block_channels) - 1)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * L, 2 * L, 1) if config.quant_conv else None
        self.post_quant_conv = nn.Conv2d(L, L, 1) if config.post_quant_conv else None
        self.register_buffer("shift", torch.zeros(L))
        self.register_buffer("scale", torch.ones(L))

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        C, H, W = image_shape
        f = self.downsample_factor
        if self.in_channels != C or H % f or W % f:
            raise ValueError(
                f"{C}×{H}×{W} images: the autoencoder takes {self.in_channels} channels and "
                f"sides divisible by its downsampling factor {f}"
            )
        return (self.latent_channels, H // f, W // f)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian(*moments.chunk(2, dim=1))  # mean, then logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, generator: GeneratorArg = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """The training pass: ``(decode(z), posterior)`` with ``z`` sampled from the posterior."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior
