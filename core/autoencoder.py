"""The posterior an autoencoder's ``encode`` returns (:class:`~denoisekit.contracts.Autoencoder`):
a Gaussian with diagonal covariance over latent grids (Rombach et al. 2022, sec. 3)."""

from __future__ import annotations

import torch

from denoisekit.diffusion import GeneratorArg, randn


class DiagonalGaussian:
    """``N(mean, exp(logvar))`` per latent value, each ``(B, C, h, w)``; logvar clamped to
    [-30, 20], as LDM's and diffusers' posteriors are."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ")
        self.mean, self.logvar = mean, logvar.clamp(-30.0, 20.0)

    def sample(self, generator: GeneratorArg = None) -> torch.Tensor:
        """``mean + std * eps``, ``generator`` as :func:`denoisekit.diffusion.randn` takes it."""
        eps = randn(self.mean.shape, generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I) per image, ``0.5 * sum(mean^2 + var - 1 - logvar)``: shape ``(B,)``."""
        terms = self.mean.square() + self.logvar.exp() - 1.0 - self.logvar
        return 0.5 * terms.flatten(1).sum(dim=1)
