"""Images as the model sees them (floats in [-1, 1], ``N×C×H×W``) and as files hold them
(uint8, ``N×H×W×C``): the one conversion each way (rounding: :func:`denoisekit.images.quantize`)."""

from __future__ import annotations

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] floats ``(N, C, H, W)`` (or one ``(C, H, W)``) → uint8 ``(N, H, W, C)``
    (or ``(H, W, C)``), rounding to nearest."""
    scaled = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.movedim(-3, -1).contiguous().cpu().numpy()


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, C)`` (or ``(N, H, W)``) → float32 ``(N, C, H, W)`` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(array))
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    return x.permute(0, 3, 1, 2).to(torch.float32).div(127.5).sub(1.0).contiguous()
