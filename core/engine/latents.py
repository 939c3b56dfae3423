"""Latents of a run's autoencoder: the per-channel ``shift`` and ``scale`` measured over
images (:func:`calibrate`) and the map between the autoencoder's latents and those the
diffusion model sees (:func:`normalize_latents`, :func:`denormalize_latents`).

*Notation* (Rombach et al. 2022, sec. 3 and appendix G): ``z ~ q(z|x) = N(mean, exp(logvar))``
per latent value; the diffusion model sees ``(z - shift) * scale`` with one ``shift`` and
one ``scale`` per latent channel (LDM's ``scale_by_std`` is the case of one channel-shared
``scale = 1 / std(z)`` and no shift; diffusers' ``shift_factor`` / ``scaling_factor``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


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
