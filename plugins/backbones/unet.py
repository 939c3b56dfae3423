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
  null class (label ``NULL_CLASS`` = -1 or ``cond=None``), for classifier-free guidance
  (Ho & Salimans 2022).
- ``num_heads`` / ``head_channels``: multi-head attention (improved-diffusion).
- ``norm_eps``, ``freq_shift``, ``flip_sin_to_cos``, ``downsample_padding``,
  ``mid_attention``: the conventions of diffusers' ``UNet2DModel``, so that its layouts
  (the ``google/ddpm-*`` checkpoints among them) are ``unet`` layouts too
  (``plugins/backbones/diffusers_layout.py`` converts configs and weights).
"""

from __future__ import annotations

from denoisekit import ComponentSpec, hookimpl
from denoisekit.plugins.backbones.diffusers_format import DIFFUSERS
from denoisekit.plugins.backbones.unet_config import UNetConfig, check_unet, unet_facts
from denoisekit.plugins.backbones.unet_network import LOG_SNR_CLAMP, UNet

__all__ = ["LOG_SNR_CLAMP", "UNet", "UNetConfig", "check_unet"]


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            kind="backbone",
            name="unet",
            config=UNetConfig,
            build=UNet,
            check=check_unet,
            facts=unet_facts,
            formats={"diffusers": DIFFUSERS},  # docs/interop.md
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
