"""The recipe's core tables (not components): ``[train]``, the training loop's options,
``[guidance]``, classifier-free guidance at sampling, ``[inpainting]``, training a
model conditioned on a masked image, ``[latent]``, diffusion on a frozen autoencoder's
latents, and ``[autoencoder_training]``, the objective of an autoencoder recipe."""

from __future__ import annotations

from typing import Any

import attrs

from denoisekit.config import (
    int_at_least,
    non_negative_finite,
    option,
    positive_finite,
    unit_interval,
)

#: Device types a run can train and sample on (``train.device``, ``--device``).
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps")


def _check_device(inst: Any, attribute: attrs.Attribute, value: str) -> None:
    if value == "auto":
        return
    import torch

    try:
        device_type = torch.device(value).type
    except (RuntimeError, ValueError, TypeError):
        device_type = None
    if device_type not in DEVICE_TYPES:
        raise ValueError(f"'{attribute.name}' must be auto, cpu, cuda, cuda:N or mps: {value!r}")


def _divides_batch_size(inst: Any, attribute: attrs.Attribute, value: int) -> None:
    if value > 0 and inst.batch_size % value:
        raise ValueError(f"'grad_accum' ({value}) must divide 'batch_size' ({inst.batch_size})")


@attrs.frozen(kw_only=True)
class TrainConfig:
    """The ``[train]`` table: options of the core training loop."""

    steps: int = option(1000, "optimization steps to train for", validator=int_at_least(1))
    batch_size: int = option(64, "images per optimization step", validator=int_at_least(1))
    grad_accum: int = option(
        1,
        "micro-batches per optimization step (batch_size must divide by it)",
        validator=[int_at_least(1), _divides_batch_size],
    )
    grad_clip: float | None = option(
        None,
        "clip the global gradient norm to this value (unset: no clipping)",
        validator=attrs.validators.optional(positive_finite),
    )
    device: str = option(
        "auto",
        "'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', 'mps'",
        validator=_check_device,
    )
    num_workers: int = option(0, "DataLoader worker processes", validator=int_at_least(0))
    pin_memory: bool = option(True, "pin host memory for faster copies to CUDA (ignored on CPU)")
    drop_last: bool = option(True, "drop the last incomplete batch of each epoch")
    label_dropout: float = option(
        0.0,
        "probability of training a step's image with the null class instead of its label "
        "(classifier-free guidance needs about 0.1; class-conditional backbones only)",
        validator=unit_interval,
    )
    log_every: int = option(
        50,
        "steps between logged scalars (host syncs happen only then)",
        validator=int_at_least(1),
    )
    init_from: str | None = option(
        None,
        "start from this run folder's or checkpoint's weights (EMA too), relative to the "
        "recipe's folder; the optimizer and step start afresh (unset: random weights)",
        validator=attrs.validators.optional(attrs.validators.instance_of(str)),
    )


def _interval(inst: Any, attribute: attrs.Attribute, value: tuple[float, float]) -> None:
    low, high = value
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(
            f"'interval' must be [low, high] with 0 <= low <= high <= 1: {list(value)}"
        )


@attrs.frozen(kw_only=True)
class GuidanceConfig:
    """The ``[guidance]`` table: classifier-free guidance (Ho & Salimans 2022) at sampling,
    for a class-conditional backbone trained with ``train.label_dropout``. The denoiser
    combines one forward of the doubled batch as ``u + scale (c - u)``, for every sampler."""

    scale: float = option(
        1.0,
        "guidance scale w: 1 = conditional (no guidance), 0 = unconditional, > 1 guided",
        validator=non_negative_finite,
    )
    rescale: float = option(
        0.0,
        "guidance rescale phi (Lin et al. 2023): 0 = off, 0.7 = their choice",
        validator=unit_interval,
    )
    interval: tuple[float, float] = option(
        (0.0, 1.0),
        "guide only where low <= t / T <= high (Kynkäänniemi et al. 2024); elsewhere conditional",
        validator=_interval,
    )


#: The mask shapes of ``[inpainting] masks`` (drawn by :mod:`denoisekit.engine.masks`).
MASK_KINDS: tuple[str, ...] = ("top", "left", "centre", "boxes", "pixels")


def _mask_kinds(inst: Any, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    unknown = [kind for kind in value if kind not in MASK_KINDS]
    if unknown or len(set(value)) != len(value):
        raise ValueError(
            f"'masks' must name distinct mask shapes of {', '.join(MASK_KINDS)}: {list(value)}"
        )


@attrs.frozen(kw_only=True)
class InpaintingConfig:
    """The ``[inpainting]`` table: train an inpainting model (Palette, Saharia et al. 2022;
    Stable Diffusion's inpainting models). Each training image gets a mask drawn from the
    run's generator (1 = regenerate) and the backbone sees ``[x_t, masked image, mask]``:
    its ``in_channels`` must be ``2 C + 1`` and its ``out_channels`` ``C`` for ``C``-channel
    images. ``denoisekit edit --mask`` then uses the model directly, and ``sample`` gives
    it an all-unknown mask."""

    masks: tuple[str, ...] = option(
        (),
        f"mask shapes drawn uniformly per image, of {', '.join(MASK_KINDS)} (empty: off)",
        converter=tuple,
        validator=_mask_kinds,
    )
    p_all_unknown: float = option(
        0.1,
        "probability that an image's mask regenerates every pixel (plain sampling)",
        validator=unit_interval,
    )
    guidance: float = option(
        1.0,
        "edit's default guidance scale on the kept pixels (--inpaint-scale; the all-unknown "
        "mask as the unconditional model): 1 = none",
        validator=non_negative_finite,
    )

    @property
    def enabled(self) -> bool:
        """Whether the run trains an inpainting model."""
        return bool(self.masks)


#: The reconstruction losses of ``[autoencoder_training] reconstruction``.
RECONSTRUCTION_LOSSES: tuple[str, ...] = ("l1", "mse")


@attrs.frozen(kw_only=True)
class AutoencoderTrainingConfig:
    """The ``[autoencoder_training]`` table: the objective of an autoencoder recipe (one with
    an ``[autoencoder]`` table and no ``[backbone]``; docs/latent.md), LDM's without LPIPS
    (Rombach et al. 2022; Esser et al. 2021): per image, the reconstruction loss summed over
    its pixels, plus ``kl_weight`` times the posterior's KL to N(0, I), plus, from step
    ``disc_start``, ``disc_weight`` times a PatchGAN's hinge generator loss. At the end of
    training the latent ``shift`` and ``scale`` are measured (calibration)."""

    reconstruction: str = option(
        "l1",
        "reconstruction loss per pixel: l1 (LDM's) or mse",
        validator=attrs.validators.in_(RECONSTRUCTION_LOSSES),
    )
    kl_weight: float = option(
        1e-6,
        "weight of the KL term (LDM: 1e-6; higher blurs reconstructions, lower makes decoded "
        "random latents noise)",
        validator=non_negative_finite,
    )
    discriminator: bool = option(
        False,
        "train a patch discriminator (PatchGAN) from disc_start on",
        validator=attrs.validators.instance_of(bool),
    )
    disc_start: int = option(
        0,
        "optimization step from which the discriminator trains and counts",
        validator=int_at_least(0),
    )
    disc_weight: float = option(
        0.5, "weight of the adversarial term", validator=non_negative_finite
    )
    disc_adaptive: bool = option(
        True,
        "scale the adversarial term by |grad rec| / |grad adv| at the reconstructions "
        "(LDM's adaptive weight)",
        validator=attrs.validators.instance_of(bool),
    )
    disc_layers: int = option(
        3, "stride-2 layers of the discriminator (its patch size)", validator=int_at_least(1)
    )
    disc_channels: int = option(
        64, "width of the discriminator's first layer", validator=int_at_least(1)
    )
    calibration_images: int = option(
        2048,
        "training images the latent shift and scale are measured on at the end (0: none)",
        validator=int_at_least(0),
    )
    calibration_posterior: str = option(
        "sample",
        "calibrate the statistics of posterior samples (sample) or of the means (mode)",
        validator=attrs.validators.in_(("sample", "mode")),
    )


#: How a latent run draws the latents of a training image from the autoencoder's posterior.
POSTERIORS: tuple[str, ...] = ("sample", "mode")


@attrs.frozen(kw_only=True)
class LatentConfig:
    """The ``[latent]`` table: latent diffusion (Rombach et al. 2022). The backbone learns
    and samples the normalized latents ``(z - shift) * scale`` of a frozen autoencoder,
    whose decoder turns samples back into images (docs/latent.md, "Latent diffusion:
    stage 2"). A recipe without the table is pixel space."""

    autoencoder: str = option(
        attrs.NOTHING,
        "a trained autoencoder: a denoisekit run folder (or checkpoint) of an autoencoder "
        "recipe, or a diffusers AutoencoderKL folder (config.json and weights); relative "
        "to the recipe's folder",
        validator=attrs.validators.instance_of(str),
    )
    cache: bool = option(
        True,
        "encode the training images once and keep their posteriors (mean, log-variance; "
        "float16) in the cache folder, rebuilt when the autoencoder or [data] changes",
        validator=attrs.validators.instance_of(bool),
    )
    posterior: str = option(
        "sample",
        "sample: a fresh latent z ~ q(z|x) per step (LDM); mode: the posterior mean",
        validator=attrs.validators.in_(POSTERIORS),
    )


#: The core tables, by recipe table name.
CORE_TABLES: dict[str, type] = {
    "train": TrainConfig,
    "guidance": GuidanceConfig,
    "inpainting": InpaintingConfig,
    "autoencoder_training": AutoencoderTrainingConfig,
    "latent": LatentConfig,
}
#: The core tables of a diffusion recipe only, and of an autoencoder recipe only.
DIFFUSION_TABLES: tuple[str, ...] = ("guidance", "inpainting", "latent")
AUTOENCODER_TABLES: tuple[str, ...] = ("autoencoder_training",)
#: Core tables a recipe may leave out, and then has none (``recipe.latent is None``).
OPTIONAL_TABLES: tuple[str, ...] = ("latent",)
