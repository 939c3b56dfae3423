"""Image helpers shared by the built-in data plugins (PIL and tensors to [-1, 1])."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from PIL import Image


def fit_square(img: Image.Image, size: int, *, center_crop: bool) -> Image.Image:
    """Resize ``img`` to ``size`` × ``size`` with antialiased bicubic resampling.

    Args:
        img: a PIL image.
        size: the side of the output, in pixels.
        center_crop: crop the largest centered square first (keeps the aspect ratio);
            otherwise stretch the whole image to the square.
    """
    from PIL import Image, ImageOps

    if img.size == (size, size):
        return img
    if center_crop:
        # ImageOps.fit resamples only the centered box of the target aspect (its filter still
        # reads the pixels just outside it): resize-shorter-side + center-crop, less work.
        return ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)
    return img.resize((size, size), Image.Resampling.BICUBIC)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image in mode ``"L"`` or ``"RGB"`` as a float32 C×H×W tensor in [-1, 1]."""
    from torchvision.transforms.functional import pil_to_tensor as uint8_chw

    x = uint8_chw(img)
    return x.to(torch.float32, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)


def random_hflip(x: torch.Tensor, p: float) -> torch.Tensor:
    """Flip ``x`` (…×W) left-right with probability ``p`` (torch's global RNG, seeded per
    DataLoader worker)."""
    if p > 0.0 and float(torch.rand(())) < p:
        return x.flip(-1)
    return x


def resize_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize N×C×H×W float images to ``size`` × ``size`` (bilinear, antialiased), kept in
    [-1, 1]."""
    if x.shape[-2:] == (size, size):
        return x
    y = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return y.clamp_(-1.0, 1.0)
