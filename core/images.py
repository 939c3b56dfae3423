"""Images as the model sees them: floats in [-1, 1], ``N×C×H×W``."""

from __future__ import annotations

import torch


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats rounded to the 256 levels of 8-bit images (as a PNG stores them)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
