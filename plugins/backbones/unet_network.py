"""The network of the ``unet`` backbone: :class:`UNet`, built from a ``UNetConfig``.

The options and their checks live in ``plugins/backbones/unet_config.py``, the blocks in
``unet_layers.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from denoisekit import NULL_CLASS
from denoisekit.plugins.backbones.unet_layers import (
    AttentionBlock,
    Downsample,
    ResAttnBlock,
    ResBlock,
    SinusoidalEmbedding,
    Upsample,
)

if TYPE_CHECKING:
    from denoisekit.plugins.backbones.unet_config import UNetConfig

#: log-SNR values are clamped to ±this before embedding (``t = 0`` of a continuous schedule
#: has ``lambda = +inf``; sinusoids of inf are NaN).
LOG_SNR_CLAMP = 50.0


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
                eps=config.norm_eps,
            )
            block = (
                AttentionBlock(
                    c_out, num_heads=heads(c_out), groups=config.groups, eps=config.norm_eps
                )
                if attn
                else None
            )
            return ResAttnBlock(res, block)

        # 1. Time (and class) embedding: sinusoids of width ch → MLP to 4·ch (DDPM).
        self.time_embed = SinusoidalEmbedding(
            ch, freq_shift=config.freq_shift, flip_sin_to_cos=config.flip_sin_to_cos
        )
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
                self.down.append(
                    Downsample(
                        c,
                        with_conv=config.resample_with_conv,
                        pad_bottom_right=config.downsample_padding == "bottom_right",
                    )
                )
                skip_widths.append(c)
                res //= 2

        # 3. Middle: res - attention (unless mid_attention is off) - res.
        self.mid = res_attn(c, c, config.mid_attention)
        self.mid_res = ResBlock(
            c,
            c,
            emb_ch,
            groups=config.groups,
            dropout=config.dropout,
            scale_shift=scale_shift,
            eps=config.norm_eps,
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
        self.norm_out = nn.GroupNorm(config.groups, c, eps=config.norm_eps)
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
                labels = labels.masked_fill(labels == NULL_CLASS, null)
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
            cond: integer class labels (B,) for a class-conditional net; ``NULL_CLASS`` or ``None``
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
