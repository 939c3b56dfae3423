"""Editing images with a trained model: img2img (SDEdit) and inpainting, for any sampler.

* **img2img** (Meng et al. 2022): ``strength`` ``s`` picks the timestep
  ``t_s = ceil(s T) - 1``; the input is noised to ``t_s`` with the image's own starting
  noise and a sampler denoises from there over the schedule's first ``t_s + 1`` timesteps
  (:func:`~denoisekit.engine.steering.truncated`). ``s = 0`` returns the input untouched;
  ``s = 1`` is plain sampling from ``x_T``.
* **inpainting**: a mask, ``1`` (white) where pixels are regenerated and ``0`` (black) where
  the input is kept; one of the methods of :mod:`denoisekit.engine.inpainting` through the
  denoiser with any sampler, or with RePaint's resampling schedule (time travel,
  :mod:`denoisekit.engine.repaint`). All take ``strength`` too; the known pixels of the
  result are the input's, exactly.
* **latent runs** (``[latent]``): the input is encoded (the posterior mean), the mask taken
  to the latent resolution (a latent is regenerated where any pixel it covers is), the
  edit runs on the latents and is decoded; then the known pixels are the input's again.

Inputs are image files or folders of them (converted to the model's channels and resized
to its size), or an ``.npz`` (``arr_0`` uint8 N×H×W×C, as ``denoisekit sample`` writes;
used as it is, so its size and channels must be the model's); masks are image files
(grey levels: white = regenerate, thresholded at half) or ``.npy``/``.npz`` arrays of 0/1
(``H×W``, ``N×H×W`` or ``N×1×H×W``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from denoisekit.denoiser import eval_mode
from denoisekit.diffusion import q_sample, randn
from denoisekit.engine.image_files import from_uint8
from denoisekit.engine.inpainting import (
    METHODS,
    TRAINED,
    ConditionedModel,
    inpainting_denoiser,
)
from denoisekit.engine.repaint import repaint
from denoisekit.engine.sampling import image_generators
from denoisekit.engine.steering import truncated
from denoisekit.errors import DataError

#: The inpainting method of ``denoisekit edit`` and its conjugate-gradient steps, chosen by
#: measurement at <= 100 and <= 500 network passes (docs/steering.md); a run trained with
#: ``[inpainting]`` uses its own conditioning (``model``) instead.
DEFAULT_METHOD = "mmps"
DEFAULT_ITERATIONS = 2

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@attrs.frozen(kw_only=True)
class EditOptions:
    """What an edit does to each image.

    Attributes:
        strength: img2img strength in [0, 1] (1 = start from pure noise).
        repaint: ``(steps, jump_length, resample)`` of RePaint's time-travel schedule, or
            None for the run's sampler.
        method: how the known pixels steer the rest (:data:`METHODS` or ``TRAINED``,
            ``"model"``); with ``repaint``,
            ``replacement`` is RePaint and ``ddnm`` is DDNM's time travel. None:
            :func:`default_method`.
        iterations: conjugate-gradient steps of ``mmps``.
        scale: ``dps``'s step ``zeta'`` (None: 1, the paper's), ``model``'s guidance scale
            on the kept pixels (None: the run's ``[inpainting] guidance``; 1: none; see
            :class:`~denoisekit.engine.inpainting.ConditionedModel`).
    """

    strength: float = 1.0
    repaint: tuple[int, int, int] | None = None
    method: str | None = None
    iterations: int = DEFAULT_ITERATIONS
    scale: float | None = None

    def __attrs_post_init__(self) -> None:
        check_strength(self.strength)
        if self.repaint is not None and min(self.repaint) < 1:
            raise DataError(f"--repaint {' '.join(map(str, self.repaint))}: all three must be >= 1")
        if self.method is not None and self.method not in (*METHODS, TRAINED):
            choices = ", ".join((*METHODS, TRAINED))
            raise DataError(f"--inpaint {self.method}: unknown method; one of {choices}")
        if self.iterations < 1:
            raise DataError(f"--cg-iterations {self.iterations}: must be >= 1")
        if self.scale is not None and not 0.0 <= self.scale < math.inf:
            raise DataError(f"--inpaint-scale {self.scale}: must be a finite number >= 0")


def default_method(denoiser: Any, options: EditOptions) -> str:
    """The method of an edit that names none: an ``[inpainting]`` run's own model, else
    :data:`DEFAULT_METHOD` (``replacement``, that is RePaint, with ``--repaint``)."""
    if isinstance(denoiser.model, ConditionedModel):
        return TRAINED
    return "replacement" if options.repaint is not None else DEFAULT_METHOD


def check_strength(strength: float) -> None:
    """One line unless ``strength`` lies in [0, 1] (NaN does not)."""
    if not 0.0 <= strength <= 1.0:
        raise DataError(f"--strength {strength} is outside [0, 1]; use 0 (keep) to 1 (resample)")


def start_timestep(strength: float, num_timesteps: int) -> int:
    """The timestep img2img starts from (``-1``: none, the input is returned)."""
    check_strength(strength)
    return math.ceil(strength * num_timesteps) - 1


def fit_to_timesteps(run: Any, options: EditOptions) -> tuple[Any, EditOptions, list[str]]:
    """The sampler and options an edit runs with, and a note for each change: a strength
    below 1 leaves the schedule's first ``ceil(s T)`` timesteps, and a sampler (its int
    ``steps`` option) or RePaint asking for more steps than that samples over the timesteps
    left, one step each. A sampler that cannot take so few steps is one line naming the
    smallest ``--strength`` it can."""
    T = run.schedule.num_timesteps
    left = start_timestep(options.strength, T) + 1
    sampler, notes = run.sampler, []
    where = f"--strength {options.strength:g} leaves {left} of the schedule's {T} timesteps"
    if left <= 0:
        return sampler, options, notes
    if options.repaint is not None:
        steps, jump, resample = options.repaint
        if steps > left:
            options = attrs.evolve(options, repaint=(left, jump, resample))
            notes.append(
                f"{where if left < T else f'the schedule has {T} timesteps'}: "
                f"RePaint takes {_steps(left)} instead of {steps}"
            )
        return sampler, options, notes
    choice = run.recipe.sampler
    steps = getattr(choice.config, "steps", None)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= left:
        return sampler, options, notes
    fewest = _fewest_steps(choice.config, left, steps)
    if fewest > left:
        raise DataError(
            f"{where}, fewer than the {fewest} steps sampler {choice.type} takes at least; "
            f"use --strength {fewest / T:g} or more, or another --sampler"
        )
    config = attrs.evolve(choice.config, steps=left)
    sampler = run.registry.build("sampler", choice.type, config)
    notes.append(f"{where}: sampler {choice.type} takes {_steps(left)} instead of {steps}")
    return sampler, options, notes


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def _fewest_steps(config: Any, left: int, steps: int) -> int:
    """The fewest ``steps`` from ``left`` up that ``config``'s validators accept."""
    for n in range(left, steps):
        try:
            attrs.evolve(config, steps=n)
        except (ValueError, TypeError):
            continue
        return n
    return steps


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    if not path.exists():
        raise DataError(f"{path}: not found; give image files, a folder or an .npz (arr_0)")
    return [path]


def _read_picture(path: Path, mode: str, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            picture = picture.convert(mode)
            if picture.size != (size, size):
                picture = picture.resize((size, size), Image.BILINEAR)
            return np.array(picture, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


def _read_array(path: Path, key: str = "arr_0") -> np.ndarray:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as data:
            if key not in data:
                raise DataError(f"{path}: no {key} in this .npz")
            return data[key]
    except DataError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npy/.npz file ({exc})") from exc


def _check_array_shape(path: Path, array: np.ndarray, image_shape: tuple[int, ...]) -> None:
    """An ``.npz``/``.npy`` input is used as it is (image files are converted and resized):
    its channels and size must be the model's."""
    channels, size, _ = image_shape
    height, width = array.shape[1:3]
    has = array.shape[3] if array.ndim == 4 else 1
    if has != channels:
        fix = "convert them to grey levels" if channels == 1 else f"give {channels} channels"
        raise DataError(
            f"{path}: arr_0 holds {has}-channel images but the model makes {channels}-channel "
            f"ones; {fix} (image files given instead are converted)"
        )
    if (height, width) != (size, size):
        raise DataError(
            f"{path}: arr_0 holds {height}×{width} images but the model makes {size}×{size} "
            f"ones; resize them to {size}×{size} (image files given instead are resized)"
        )


def load_inputs(paths: list[Path], image_shape: tuple[int, int, int]) -> torch.Tensor:
    """The input images ``(N, C, H, W)`` in [-1, 1]: image files converted to the model's
    channels and resized to its size; ``.npz``/``.npy`` arrays as they are (checked)."""
    channels, size, _ = image_shape
    arrays = []
    for path in paths:
        if path.suffix in (".npz", ".npy"):
            array = _read_array(path)
            if array.dtype != np.uint8 or array.ndim not in (3, 4) or 0 in array.shape:
                raise DataError(
                    f"{path}: arr_0 must be uint8 N×H×W×C images, got {array.dtype} {array.shape}"
                )
            _check_array_shape(path, array, image_shape)
            arrays.append(from_uint8(array))
            continue
        for file in _files(path):
            picture = _read_picture(file, "L" if channels == 1 else "RGB", size)
            arrays.append(from_uint8(picture[None]))
    return torch.cat(arrays)


def load_mask(path: Path, count: int, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """The mask ``(1 or N, 1, H, W)``: 1 = regenerate, 0 = keep."""
    _, size, _ = image_shape
    if path.suffix in (".npz", ".npy"):
        mask = torch.from_numpy(np.asarray(_read_array(path), dtype=np.float32))
    else:
        mask = torch.from_numpy(_read_picture(path, "L", size).astype(np.float32) / 255.0)
        mask = (mask >= 0.5).float()
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    if (
        mask.ndim != 4
        or mask.shape[1] != 1
        or tuple(mask.shape[2:]) != (size, size)
        or mask.shape[0] not in (1, count)
    ):
        raise DataError(
            f"{path}: a mask of shape {tuple(mask.shape)} does not fit {count} inputs of "
            f"{size}×{size}; give one H×W mask (or one per input) of {size}×{size}"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise DataError(f"{path}: mask values must be 0 (keep) or 1 (regenerate)")
    return mask


def edit_batch(
    denoiser: Any,
    sampler: Any,
    images: torch.Tensor,
    x_T: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    options: EditOptions,
    generator: Any,
    cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """Edit one batch (all on ``x_T``'s device); see the module docstring."""
    t_start = start_timestep(options.strength, denoiser.schedule.num_timesteps)
    if t_start < 0:
        return images.clone()
    if t_start + 1 < denoiser.schedule.num_timesteps:
        t = torch.full((images.shape[0],), t_start, dtype=torch.long, device=x_T.device)
        x_start = q_sample(denoiser.schedule, images, t, x_T)
        denoiser = truncated(denoiser, t_start)
    else:
        x_start = x_T
    if mask is None:
        return sampler.sample(denoiser, x_start, generator=generator, cond=cond)
    if options.method is None:
        options = attrs.evolve(options, method=default_method(denoiser, options))
    # RePaint with replacement re-imposes the known pixels itself; every other method
    # steers through the denoiser wrapper.
    replacing = options.repaint is not None and options.method == "replacement"
    if not replacing:
        denoiser = inpainting_denoiser(
            options.method,
            denoiser,
            images,
            mask,
            x_T,
            iterations=options.iterations,
            scale=options.scale,
        )
    if options.repaint is not None:
        steps, jump, resample = options.repaint
        out = repaint(
            denoiser,
            x_start,
            images,
            mask,
            steps=steps,
            jump_length=jump,
            resample=resample,
            generator=generator,
            cond=cond,
            replace_known=replacing,
        )
    else:
        out = sampler.sample(denoiser, x_start, generator=generator, cond=cond)
    return torch.lerp(images.to(out.dtype), out, mask.to(out.dtype))


@torch.no_grad()
def edit_images(
    run: Any,
    images: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    options: EditOptions,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 64,
    sampler: Any = None,
) -> torch.Tensor:
    """Edit every input with the run's sampling weights and ``sampler`` (default the run's;
    :func:`fit_to_timesteps` gives one for a low strength), in batches; image ``i``'s noise
    comes from its own generator seeded by ``(seed, i)`` (as sampling)."""
    out = []
    denoiser = run.sampling_denoiser()
    space = getattr(run, "latent", None)
    with eval_mode(denoiser.model):
        for start in range(0, images.shape[0], batch_size):
            pixels = images[start : start + batch_size].to(run.device)
            count = pixels.shape[0]
            batch = pixels if space is None else space.encode(pixels)
            generator = image_generators(seed, start, count)
            x_T = randn(batch.shape, generator, device=run.device)
            part = None
            if mask is not None:
                part = (mask if mask.shape[0] == 1 else mask[start : start + count]).to(run.device)
            cond = labels[start : start + count].to(run.device) if labels is not None else None
            result = edit_batch(
                denoiser,
                sampler or run.sampler,
                batch,
                x_T,
                mask=part if space is None else _latent_mask(space, part),
                options=options,
                generator=generator,
                cond=cond,
            )
            if space is not None:
                result = _decoded(space, result, pixels, part, options.strength)
            out.append(result.float().cpu())
    return torch.cat(out)


def _latent_mask(space: Any, mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else space.downsample_mask(mask)


def _decoded(
    space: Any, z: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor | None, strength: float
) -> torch.Tensor:
    """A latent edit's images: the decoded latents, with the known pixels re-imposed (the
    input exactly where the mask keeps it); strength 0 keeps the input."""
    if strength == 0:
        return pixels.clone()
    images = space.decode(z)
    return (
        images
        if mask is None
        else torch.lerp(pixels.to(images.dtype), images, mask.to(images.dtype))
    )
