"""Building blocks of the attention U-Net backbone (``plugins/backbones/unet.py``).

The blocks follow DDPM (Ho et al. 2020, appendix B and the reference TF code
``diffusion_tf/models/unet.py``) and improved-diffusion (Nichol & Dhariwal 2021,
``use_scale_shift_norm``). Every op keeps the memory format of its input, so a model
converted with ``model.to(memory_format=torch.channels_last)`` runs channels-last end to
end, and nothing branches on tensor values, so ``torch.compile(fullgraph=True)`` traces the
whole network.

*Notation*: ``B`` batch, ``C`` channels, ``H``/``W`` spatial size, ``L = H*W`` tokens,
``emb`` the (time + class) embedding of width ``4 * channels``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_frequencies(
    dim: int, max_period: float = 10_000.0, freq_shift: int | None = None
) -> torch.Tensor:
    """The ``dim // 2`` frequencies of the Transformer sinusoidal embedding (float32).

    ``freq_shift = None``: DDPM's ``get_timestep_embedding``,
    ``freq_i = max_period ** (-i / (half - 1))``. An int: diffusers' ``Timesteps``,
    ``max_period ** (-i / (half - freq_shift))`` in its float32 operation order (so
    ``freq_shift = 1`` equals DDPM's up to one float32 rounding and diffusers' exactly).
    """
    half = dim // 2
    if half < 2:
        raise ValueError(f"the sinusoidal embedding needs dim >= 4: {dim}")
    if freq_shift is not None:
        exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32)
        return torch.exp(exponent / (half - freq_shift))
    exponent = -math.log(max_period) / (half - 1)
    return torch.exp(torch.arange(half, dtype=torch.float32) * exponent)


class SinusoidalEmbedding(nn.Module):
    """``t`` of shape ``(B,)`` → ``[sin(t * freq), cos(t * freq)]`` of shape ``(B, dim)``.

    ``[cos, sin]`` with ``flip_sin_to_cos``; ``freq_shift`` as in
    :func:`sinusoidal_frequencies`. Computed in float32 whatever the model dtype (timesteps
    up to 1000 lose their fine phases in half precision); the frequencies are a
    non-persistent buffer computed once.
    """

    def __init__(
        self,
        dim: int,
        max_period: float = 10_000.0,
        *,
        freq_shift: int | None = None,
        flip_sin_to_cos: bool = False,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.flip_sin_to_cos = flip_sin_to_cos
        freqs = sinusoidal_frequencies(dim, max_period, freq_shift)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs.float()[None, :]
        parts = [torch.sin(args), torch.cos(args)]
        emb = torch.cat(parts[::-1] if self.flip_sin_to_cos else parts, dim=1)
        if self.dim % 2:  # odd width: pad one zero column, as DDPM does
            emb = F.pad(emb, (0, 1))
        return emb


def channels_first_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(qᵀk / √d)`` applied to ``v``, all ``(B, heads, d, L)``, by two matrix products.

    The layout is the NCHW one (channels first): ``q``, ``k`` and ``v`` are views of the
    qkv convolution's output and the result, ``(B, heads, d, L)``, is a view of a
    ``(B, C, H, W)`` tensor, so no transpose is copied on the way in or out. Attention
    weights ``w = softmax(qᵀk / √d)`` are ``(B, heads, L, L)``; output ``o = v wᵀ``.

    Used for bfloat16 on a CPU, where it beats SDPA's flash kernel 3× for forward +
    backward (4.1 vs 13.3 ms at B=32, L=256, d=64; 0.28 vs 0.87 ms at L=16; AVX-512 BF16,
    docs/performance.md): the products run on the native bf16 units, the flash kernel does
    not. The scores are rounded to bfloat16 before the softmax, as in any bf16 "math"
    attention: about 0.4% relative error in the output against SDPA's 0.2%, inside bf16
    autocast's 3% for the whole network.
    """
    w = (q.transpose(-1, -2) * q.shape[-2] ** -0.5) @ k  # (B, heads, L, L)
    return v @ w.softmax(dim=-1).transpose(-1, -2)


def _bf16_on_cpu(x: torch.Tensor) -> bool:
    """Whether the block computes in bfloat16 on a CPU (bf16 input, or bf16 autocast)."""
    if x.device.type != "cpu":
        return False
    if x.dtype == torch.bfloat16:
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a CPU mask drawn by ``torch.rand`` instead of ``bernoulli_``.

    On a CPU, torch's dropout draws its mask with ``bernoulli_``, which took 12% of a
    bf16 training step (docs/performance.md); a float32 uniform draw compared with ``p``
    keeps each element with the same probability ``1 - p``, independently, and costs half
    as much (2.3 vs 4.7 ms forward for 32×32×32×32 bf16). Same generator (torch's global
    one, so checkpointed RNG state still reproduces a run); other devices keep torch's
    fused dropout kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        # y = x * m with m_i = 1[u_i >= p] / (1 - p), u_i ~ U[0, 1): E[y_i] = x_i, as
        # nn.Dropout. Drawn, thresholded and scaled in place in float32, then cast to x's
        # dtype: measured faster than torch.where or a bool mask (docs/performance.md).
        mask = torch.rand_like(x, dtype=torch.float32).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        return x * mask.to(x.dtype)


class ResBlock(nn.Module):
    """DDPM residual block with time (+ class) conditioning.

    ``h = conv1(SiLU(GN(x)))``; the projected embedding enters either additively
    (``h += proj(SiLU(emb))``, DDPM) or as FiLM after the second GroupNorm
    (``GN(h) * (1 + scale) + shift``, improved-diffusion's ``use_scale_shift_norm``); then
    ``SiLU``, dropout, ``conv2`` (zero-initialised, so the block starts as the identity) and
    the skip connection (a 1×1 conv when the width changes, DDPM's NIN shortcut).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        groups: int,
        dropout: float,
        scale_shift: bool,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, 2 * out_channels if scale_shift else out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, C' , 1, 1): broadcast, no copy
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the ``H*W`` positions, with a residual connection.

    ``x + proj(SDPA(q, k, v))`` where ``q, k, v`` come from one 1×1 conv of ``GN(x)``
    (DDPM's ``attn_block``, multi-head as in improved-diffusion). The output projection is
    zero-initialised so the block starts as the identity.
    """

    def __init__(self, channels: int, *, num_heads: int, groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        heads = self.num_heads
        if _bf16_on_cpu(x):  # the kernel measured fastest there (channels_first_attention)
            # (B, 3C, H, W) → (B, 3, heads, d, L): a view of an NCHW qkv.
            qkv = self.qkv(self.norm(x)).reshape(B, 3, heads, C // heads, H * W)
            o = channels_first_attention(*qkv.unbind(1)).reshape(B, C, H, W)
            if not x.is_contiguous():  # a channels-last model stays channels-last
                o = o.contiguous(memory_format=torch.channels_last)
            return x + self.proj(o)
        # SDPA's fused kernels (CPU flash, CUDA flash / mem-efficient) need q, k, v with a
        # unit stride along the head dim, i.e. channels-last activations; on NCHW input they
        # fall back to the unfused math path (3-4× slower on CPU at 32×32). So the block works
        # channels-last inside: a no-op for a channels-last model, one copy of GN(x) otherwise.
        h = self.norm(x).contiguous(memory_format=torch.channels_last)
        # (B, 3C, H, W) → (B, 3, heads, d, L): a view of the channels-last qkv.
        qkv = self.qkv(h).reshape(B, 3, heads, C // heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, L, d), stride(-1) == 1
        o = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, d)
        # (B, heads, L, d) → (B, L, heads·d) = (B, H, W, C) → permuted to a channels-last
        # (B, C, H, W) view; the reshape is the one copy of the attention output.
        o = o.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return x + self.proj(o)


class Downsample(nn.Module):
    """Halve H and W: a stride-2 3×3 conv, or 2×2 average pooling.

    The conv pads one pixel on every side, or with ``pad_bottom_right`` one pixel after the
    last row and column only (DDPM's TF ``"SAME"`` padding; diffusers'
    ``downsample_padding = 0``).
    """

    def __init__(self, channels: int, *, with_conv: bool, pad_bottom_right: bool = False) -> None:
        super().__init__()
        self.pad_bottom_right = pad_bottom_right and with_conv
        padding = 0 if self.pad_bottom_right else 1
        self.conv = (
            nn.Conv2d(channels, channels, 3, stride=2, padding=padding) if with_conv else None
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        if self.conv is not None:
            if self.pad_bottom_right:
                x = F.pad(x, (0, 1, 0, 1))
            return self.conv(x)
        return F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then (optionally) a 3×3 conv."""

    def __init__(self, channels: int, *, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.conv is not None:
            x = self.conv(x)
        return x


class ResAttnBlock(nn.Module):
    """A residual block followed by an optional attention block."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.res(x, emb)
        if self.attn is not None:
            h = self.attn(h)
        return h
