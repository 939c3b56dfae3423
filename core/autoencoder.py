"""Latents of an autoencoder (the :class:`~denoisekit.contracts.Autoencoder` contract): the
posterior :class:`DiagonalGaussian`, the latent shift and scale (:func:`calibrate`), and
the map between an autoencoder's latents and the latents a diffusion model sees.

*Notation* (Rombach et al. 2022, sec. 3 and appendix G): ``z ~ q(z|x) = N(mean, exp(logvar))``
per latent value; the diffusion model sees ``(z - shift) * scale`` with one ``shift`` and
one ``scale`` per latent channel (LDM's ``scale_by_std`` is the case of one channel-shared
``scale = 1 / std(z)`` and no shift; diffusers' ``shift_factor`` / ``scaling_factor``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from denoisekit.diffusion import GeneratorArg, randn

#: ``logvar`` is clamped to this range, as LDM's and diffusers' ``DiagonalGaussianDistribution``.
LOGVAR_RANGE: tuple[float, float] = (-30.0, 20.0)


class DiagonalGaussian:
    """A Gaussian with diagonal covariance over latent grids ``(B, C, h, w)``: an encoder's
    posterior ``q(z|x)``. ``logvar`` is clamped to :data:`LOGVAR_RANGE`."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ")
        self.mean = mean
        self.logvar = logvar.clamp(*LOGVAR_RANGE)

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> DiagonalGaussian:
        """From ``(B, 2C, h, w)`` moments: the first ``C`` channels the mean, then logvar."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: GeneratorArg = None) -> torch.Tensor:
        """``mean + std * eps``; ``generator`` as :func:`denoisekit.diffusion.randn` takes it
        (one per image: the same latents whatever the batch)."""
        eps = randn(self.mean.shape, generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The most likely latents: the mean."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per image, summed over the latent values: shape ``(B,)``.

        ``0.5 * sum(mean^2 + var - 1 - logvar)`` (Kingma & Welling 2014, appendix B).
        """
        terms = self.mean.square() + self.logvar.exp() - 1.0 - self.logvar
        return 0.5 * terms.flatten(1).sum(dim=1)


def _channel_view(autoencoder: Any, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1, *([1] * (z.ndim - 2)))
    shift = autoencoder.shift.to(device=z.device, dtype=z.dtype).reshape(shape)
    return shift, autoencoder.scale.to(device=z.device, dtype=z.dtype).reshape(shape)


def normalize_latents(autoencoder: Any, z: torch.Tensor) -> torch.Tensor:
    """An autoencoder's latents as the diffusion model sees them: ``(z - shift) * scale``."""
    shift, scale = _channel_view(autoencoder, z)
    return (z - shift) * scale


def denormalize_latents(autoencoder: Any, z: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`normalize_latents`: ``z / scale + shift``, for ``decode``."""
    shift, scale = _channel_view(autoencoder, z)
    return z / scale + shift


@torch.no_grad()
def calibrate(
    autoencoder: Any, batches: Iterable[torch.Tensor], *, posterior: str = "sample"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Measure the latent ``shift`` and ``scale`` over image batches and store them in the
    autoencoder's buffers: per channel, the latents' mean and ``1 / std`` (unit variance per
    channel, as LDM's ``scale_by_std`` but per channel and centred).

    ``posterior = "sample"``: the statistics of ``z ~ q(z|x)``, what stage 2 trains on,
    computed exactly from the distributions (law of total variance: ``Var z = E[var] +
    Var[mean]``), so no noise is drawn; ``"mode"``: of the means alone. Sums are float64;
    the autoencoder encodes in eval mode.

    Returns:
        ``(shift, scale)``, each ``(latent_channels,)`` float32 on the CPU.

    Raises:
        ValueError: no images, an unknown ``posterior``, or a channel constant over them.
    """
    if posterior not in ("sample", "mode"):
        raise ValueError(f"posterior must be 'sample' or 'mode', got {posterior!r}")
    device, dtype = autoencoder.shift.device, autoencoder.shift.dtype
    total = squares = None
    count = 0
    training = getattr(autoencoder, "training", False)
    if training:
        autoencoder.eval()
    try:
        for batch in batches:
            dist = autoencoder.encode(batch.to(device=device, dtype=dtype))
            mean = dist.mean.double().transpose(0, 1).flatten(1)  # (C, B*h*w)
            second = mean.square()
            if posterior == "sample":
                second = second + dist.logvar.double().exp().transpose(0, 1).flatten(1)
            total = mean.sum(1) if total is None else total + mean.sum(1)
            squares = second.sum(1) if squares is None else squares + second.sum(1)
            count += mean.shape[1]
    finally:
        if training:
            autoencoder.train()
    if total is None or squares is None or count == 0:
        raise ValueError("calibrate needs at least one image")
    shift = total / count
    std = (squares / count - shift.square()).clamp(min=0).sqrt()
    flat = [int(c) for c in torch.nonzero(std <= 1e-12 * (1 + shift.abs())).flatten()]
    if flat:
        raise ValueError(f"latent channel(s) {flat} are constant over the images: cannot scale")
    autoencoder.shift.copy_(shift.to(autoencoder.shift.dtype))
    autoencoder.scale.copy_((1.0 / std).to(autoencoder.scale.dtype))
    return shift.float().cpu(), (1.0 / std).float().cpu()
