"""The latent space of a latent run (``[latent]``; Rombach et al. 2022): the frozen
autoencoder between the images and what the backbone learns and samples.

*Notation*: ``q(z|x)`` the autoencoder's posterior, ``z`` its latents; the backbone sees
``(z - shift) * scale`` (:func:`~denoisekit.engine.latents.normalize_latents`), and a
sample is decoded from ``z / scale + shift``. Pixel space has a data range, [-1, 1], that
samplers clamp to; latent space has none (``Denoiser.data_range = None``): only the
decoded images are clamped to [-1, 1].

:func:`open_latent_space` loads the autoencoder (:mod:`~denoisekit.engine.autoencoder_source`),
checks the backbone against its latent shape, and gives the training batches' source: the
latent cache (:mod:`~denoisekit.engine.latent_cache`) or the images themselves, encoded at
every step (``cache = false``).
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from denoisekit.autoencoder import DiagonalGaussian
from denoisekit.denoiser import PIXEL_RANGE
from denoisekit.engine import distributed
from denoisekit.engine.autoencoder_source import (
    LoadedAutoencoder,
    latent_problems,
    load_autoencoder,
)
from denoisekit.engine.latent_cache import FLIP_OPTION, cache_key, cached_latents
from denoisekit.engine.latents import denormalize_latents, normalize_latents
from denoisekit.errors import RecipeError
from denoisekit.host.convert import converter

log = logging.getLogger(__name__)


class LatentSpace:
    """A latent run's frozen autoencoder and the maps through it.

    Attributes:
        autoencoder: the frozen autoencoder on the run's device.
        source: what it was loaded from (:class:`LoadedAutoencoder`).
        posterior: ``"sample"`` (a fresh ``z ~ q(z|x)`` per step) or ``"mode"``.
        cached: whether the training batches are cached posteriors (else images).
        image_shape: ``(C, H, W)`` of the images; ``shape``: ``(c, h, w)`` of the latents.
    """

    def __init__(
        self,
        loaded: LoadedAutoencoder,
        *,
        posterior: str,
        cached: bool,
        image_shape: tuple[int, int, int],
        device: torch.device,
    ) -> None:
        self.autoencoder = loaded.module.to(device)
        self.source = loaded
        self.posterior, self.cached = posterior, cached
        self.image_shape = tuple(image_shape)
        self.shape = tuple(self.autoencoder.latent_shape(self.image_shape))

    @torch.no_grad()
    def training_latents(
        self, batch: torch.Tensor, generator: torch.Generator, dist: Any = distributed.SINGLE
    ) -> torch.Tensor:
        """The normalized latents of a training batch: cached ``[mean, logvar]`` params or
        images (encoded now). Under torchrun the posterior noise is drawn for the global
        batch and sliced, so the generators stay equal on every rank."""
        if self.cached:
            dist_q = DiagonalGaussian(*batch.chunk(2, dim=1))
        else:
            dist_q = self.autoencoder.encode(batch)
        if self.posterior == "mode":
            z = dist_q.mode()
        else:
            mean = dist_q.mean
            n = mean.shape[0] * dist.world_size
            eps = torch.randn(
                (n, *mean.shape[1:]), generator=generator, device=mean.device, dtype=mean.dtype
            )
            if dist.world_size > 1:
                eps = eps[distributed.rank_slice(n, dist)]
            z = mean + torch.exp(0.5 * dist_q.logvar) * eps
        return normalize_latents(self.autoencoder, z)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The normalized latents of images: the posterior mean (deterministic; edits)."""
        return normalize_latents(self.autoencoder, self.autoencoder.encode(images).mode())

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] of normalized latents ``z``, in ``z``'s dtype."""
        images = self.autoencoder.decode(denormalize_latents(self.autoencoder, z))
        return images.clamp(*PIXEL_RANGE).to(z.dtype)

    def downsample_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A pixel mask ``(B, 1, H, W)`` (1 = regenerate) at the latent resolution: a latent
        is regenerated where any pixel it covers is (max pooling), so that no known pixel
        is left to a latent the edit changes without the rest being regenerated too."""
        return F.adaptive_max_pool2d(mask, self.shape[1:])

    def record(self) -> dict[str, str]:
        """What a latent run's checkpoint keeps of its autoencoder: source and hash."""
        return {"autoencoder": str(self.source.source), "sha256": self.source.sha256}

    def check_record(self, record: Any, source: str) -> None:
        """Warn where the autoencoder's weights differ from those the run was trained on."""
        if isinstance(record, dict) and record.get("sha256") not in (None, self.source.sha256):
            log.warning(
                "%s: the autoencoder %s differs from the one this run was trained on "
                "(weights hash %s, now %s): its samples decode through other weights",
                source, self.source.source, str(record["sha256"])[:12], self.source.sha256[:12],
            )  # fmt: skip


def _flip_free(config: Any) -> tuple[Any, float]:
    """The data config without its left-right flips, and their probability."""
    hflip = getattr(config, FLIP_OPTION, 0.0)
    if not isinstance(hflip, float | int) or hflip <= 0:
        return config, 0.0
    return attrs.evolve(config, **{FLIP_OPTION: 0.0}), float(hflip)


def _stated_shape(recipe: Any, registry: Any) -> tuple[int, int, int] | None:
    """The data's image shape as its component states it (None: not stated)."""
    entry = registry.get("data", recipe.data.type)
    facts = entry.spec.facts(recipe.data.config) if entry.spec.facts is not None else None
    shape = (facts or {}).get("image_shape")
    return None if shape is None else tuple(shape)  # type: ignore[return-value]


def check_latent(
    recipe: Any, registry: Any, image_shape: tuple[int, int, int] | None = None
) -> LoadedAutoencoder:
    """The autoencoder of ``recipe.latent``, loaded, with the backbone checked against its
    latents of ``image_shape`` (default: the data's stated shape; unknown: not checked).

    Raises:
        RecipeError: one line (no autoencoder there, or a backbone that does not fit).
    """
    loaded = load_autoencoder(recipe.root / recipe.latent.autoencoder, registry=registry)
    shape = image_shape if image_shape is not None else _stated_shape(recipe, registry)
    problems = latent_problems(recipe, loaded, shape)
    if problems:
        key, message = problems[0]
        raise RecipeError(f"{recipe.path or '<recipe>'}: {key}: {message}")
    return loaded


def open_latent_space(
    recipe: Any, registry: Any, device: torch.device, *, with_data: bool
) -> tuple[LatentSpace, Any, Any]:
    """``(space, data, batch source)`` of a latent recipe: the data is the recipe's
    training images (without flips where they are cached) and the batch source what the
    batch stream draws: the latent cache, or the data itself (``cache = false``); both
    None without data."""
    latent, choice = recipe.latent, recipe.data
    config, hflip = _flip_free(choice.config) if latent.cache else (choice.config, 0.0)
    data = source = None
    if with_data:
        data = registry.build("data", choice.type, config, root=recipe.root, train=True)
        source = data
    shape = tuple(data.image_shape) if data is not None else _stated_shape(recipe, registry)
    if shape is None:
        raise RecipeError(
            f"{recipe.path or '<recipe>'}: data: {choice.type!r} does not state its "
            "image_shape, which a latent run needs to sample without its data"
        )
    loaded = check_latent(recipe, registry, shape)  # type: ignore[arg-type]
    space = LatentSpace(
        loaded,
        posterior=latent.posterior,
        cached=latent.cache,
        image_shape=shape,  # type: ignore[arg-type]
        device=device,
    )
    if data is not None and latent.cache:
        table = {"type": choice.type, **converter.unstructure(choice.config)}
        key = cache_key(loaded.sha256, table, recipe.root, len(data))
        source, path, built = cached_latents(
            space.autoencoder, data, key=key, hflip=hflip, device=device
        )
        log.info("latent cache %s (%s)", path, "built" if built else "reused")
    return space, data, source
