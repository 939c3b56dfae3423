"""The KL autoencoder of latent diffusion (Rombach et al. 2022), registered as autoencoder
``"kl"``: images to a Gaussian posterior over a latent grid ``2**(len(block_channels) - 1)``
times smaller per side, and latents back (the network: ``kl_network.py``).

The defaults are LDM's ``kl-f4`` first stage (widths 128, 256, 512, two residual blocks per
level, three latent channels, attention in the middle). Its weights are diffusers'
``AutoencoderKL`` weights, name for name; the spec's ``"diffusers"`` format converts
configs, and ``shift``/``scale`` to and from ``shift_factor``/``scaling_factor`` or
``latents_mean``/``latents_std`` (``diffusers_kl.py``; docs/latent.md).
"""

from __future__ import annotations

from denoisekit import ComponentSpec, hookimpl
from denoisekit.plugins.autoencoders.diffusers_kl import DIFFUSERS
from denoisekit.plugins.autoencoders.kl_config import KLConfig, check_kl, kl_facts
from denoisekit.plugins.autoencoders.kl_network import KLAutoencoder

__all__ = ["KLAutoencoder", "KLConfig", "check_kl", "kl_facts"]


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            kind="autoencoder",
            name="kl",
            config=KLConfig,
            build=KLAutoencoder,
            facts=kl_facts,
            check=check_kl,
            formats={"diffusers": DIFFUSERS},  # docs/latent.md
            summary="KL autoencoder of latent diffusion (diffusers AutoencoderKL layout)",
            probe={
                "in_channels": 1,
                "block_channels": (8, 16),
                "num_res_blocks": 1,
                "latent_channels": 2,
                "groups": 4,
            },
        )
    ]
