"""Inpainting masks, ``(N, 1, H, W)`` with 1 where pixels are regenerated and 0 where kept:
the shapes ``[inpainting] masks`` trains on and ``benchmarks/inpaint.py`` measures.

* ``top`` / ``left``: the top rows / left columns, half the image;
* ``centre``: the middle square, half the side;
* ``boxes``: three random boxes per image, each side 2 to ``H // 2`` pixels (overlaps merge);
* ``pixels``: each pixel with probability 1/2.

Everything is drawn on the generator's device in a fixed number of draws per call (no
per-image Python, no host sync), so that a run's generator resumes exactly.
"""

from __future__ import annotations

import torch

from denoisekit.host.core_tables import MASK_KINDS

__all__ = ["MASK_KINDS", "conditioning", "draw_masks", "make_mask"]

BOXES = 3


def _shape(kind: str, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    device = generator.device
    half, quarter = size // 2, size // 4
    rows = torch.arange(size, device=device)
    if kind == "top":
        return (rows < half).view(1, 1, size, 1).expand(n, 1, size, size)
    if kind == "left":
        return (rows < half).view(1, 1, 1, size).expand(n, 1, size, size)
    if kind == "centre":
        inside = (rows >= quarter) & (rows < size - quarter)
        return (inside[:, None] & inside[None, :]).expand(n, 1, size, size)
    if kind == "pixels":
        return torch.rand((n, 1, size, size), device=device, generator=generator) < 0.5
    if kind == "boxes":
        sides = torch.randint(2, half + 1, (2, n, BOXES, 1), device=device, generator=generator)
        u = torch.rand((2, n, BOXES, 1), device=device, generator=generator)
        start = (u * (size - sides + 1)).long()  # uniform in 0 .. size - side
        inside = (rows >= start) & (rows < start + sides)  # (2, n, BOXES, size)
        return (inside[0, ..., :, None] & inside[1, ..., None, :]).any(dim=1, keepdim=True)
    raise ValueError(f"unknown mask {kind!r}; one of {', '.join(MASK_KINDS)}")


def draw_masks(
    kinds: tuple[str, ...] | list[str],
    n: int,
    size: int,
    generator: torch.Generator,
    p_all_unknown: float = 0.0,
) -> torch.Tensor:
    """``n`` float masks ``(n, 1, size, size)`` on ``generator``'s device: each image's
    shape drawn uniformly from ``kinds``, then all-unknown with probability
    ``p_all_unknown``."""
    device = generator.device
    shapes = torch.stack([_shape(kind, n, size, generator) for kind in kinds])
    if len(kinds) > 1:
        pick = torch.randint(0, len(kinds), (n,), device=device, generator=generator)
        mask = shapes[pick, torch.arange(n, device=device)]
    else:
        mask = shapes[0]
    if p_all_unknown > 0:
        everything = torch.rand((n, 1, 1, 1), device=device, generator=generator) < p_all_unknown
        mask = mask | everything
    return mask.float()


def make_mask(kind: str, count: int, size: int, seed: int = 0) -> torch.Tensor:
    """``count`` masks of one shape from a CPU generator seeded with ``seed``."""
    return draw_masks((kind,), count, size, torch.Generator().manual_seed(seed))


def conditioning(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What an inpainting model sees beside ``x_t``: ``[masked image, mask]``, ``2 C + 1``
    channels (the regenerated pixels of the image are 0)."""
    mask = mask.to(images.dtype).expand(images.shape[0], 1, *images.shape[2:])
    return torch.cat([images * (1.0 - mask), mask], dim=1)
