"""Inception-v3 pool features for FID, from weights already on disk (nothing is downloaded).

Two weight files are understood:

* pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``: the TensorFlow FID network
  (Heusel et al. 2017) ported to PyTorch; 1008 output classes. Its blocks pool differently
  from torchvision's Inception-v3: the 3×3 average pools of the A, C and first E blocks
  leave the zero padding out of the average (TensorFlow's ``SAME`` pooling), and the last E
  block max-pools. This module builds that variant, so the numbers are the standard FID.
* torchvision's ``inception_v3_google-0cc3c7bd.pth`` (ImageNet classes): close to, but not
  the same numbers as, the standard FID.

Images go in as [-1, 1] floats (from 8-bit values), are resized to 299×299 bilinearly
(``align_corners=False``, as pytorch-fid) and fed in [-1, 1], the range both weight files
expect; grey images are repeated to three channels. The features are the 2048 activations
of the last average pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from denoisekit.errors import DenoisekitError

#: The file names looked for, standard FID first.
FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
TORCHVISION_WEIGHTS = "inception_v3_google-0cc3c7bd.pth"
WEIGHT_FILES = (FID_WEIGHTS, TORCHVISION_WEIGHTS)

_LOADED: dict[tuple[str, str], InceptionFeatures] = {}


def search_dirs(cache_dir: Path | str) -> list[Path]:
    """Folders searched for the weight files: the denoisekit cache, then torch hub's."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [Path(cache_dir), hub]


def find_weights(option: str | None, cache_dir: Path | str) -> Path:
    """The weights file: the ``inception_weights`` option, else the first file found.

    Raises:
        DenoisekitError: no file (one line saying where to put one).
    """
    if option is not None:
        path = Path(option).expanduser()
        if not path.is_file():
            raise DenoisekitError(
                f"metrics.fd.inception_weights = {option!r}: no such file (put pytorch-fid's "
                f"{FID_WEIGHTS} or torchvision's {TORCHVISION_WEIGHTS} there)"
            )
        return path
    dirs = search_dirs(cache_dir)
    for folder in dirs:
        for name in WEIGHT_FILES:
            if (folder / name).is_file():
                return folder / name
    raise DenoisekitError(
        f"Inception-v3 weights not found, and nothing is downloaded: put pytorch-fid's "
        f"{FID_WEIGHTS} (standard FID) or torchvision's {TORCHVISION_WEIGHTS} in {dirs[0]} "
        f"or {dirs[1]}, or set metrics.fd.inception_weights = PATH (for the digits, "
        "metrics.fd.features = 'digits' needs no download)"
    )


# --------------------------------------------------------------------------- the FID blocks


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's SAME average pool: padded zeros are not counted.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _blocks() -> Any:
    from torchvision.models import inception as tv

    class BlockA(tv.InceptionA):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            pool = self.branch_pool(_tf_avg_pool(x))
            return torch.cat([self.branch1x1(x), b5, b3, pool], 1)

    class BlockC(tv.InceptionC):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d = x
            for layer in (
                self.branch7x7dbl_1,
                self.branch7x7dbl_2,
                self.branch7x7dbl_3,
                self.branch7x7dbl_4,
                self.branch7x7dbl_5,
            ):
                d = layer(d)
            pool = self.branch_pool(_tf_avg_pool(x))
            return torch.cat([self.branch1x1(x), b7, d, pool], 1)

    class BlockE(tv.InceptionE):
        def __init__(self, in_channels: int, max_pool: bool) -> None:
            super().__init__(in_channels)
            self.max_pool = max_pool

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
            if self.max_pool:  # the FID network's last block max-pools
                pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            else:
                pooled = _tf_avg_pool(x)
            return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)

    return BlockA, BlockC, BlockE


def build_inception(variant: str) -> nn.Module:
    """An untrained Inception-v3 of ``variant`` ``"fid"`` or ``"torchvision"`` (no fc)."""
    from torchvision.models import inception_v3

    if variant == "fid":
        net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
        BlockA, BlockC, BlockE = _blocks()
        net.Mixed_5b = BlockA(192, pool_features=32)
        net.Mixed_5c = BlockA(256, pool_features=64)
        net.Mixed_5d = BlockA(288, pool_features=64)
        net.Mixed_6b = BlockC(768, channels_7x7=128)
        net.Mixed_6c = BlockC(768, channels_7x7=160)
        net.Mixed_6d = BlockC(768, channels_7x7=160)
        net.Mixed_6e = BlockC(768, channels_7x7=192)
        net.Mixed_7b = BlockE(1280, max_pool=False)
        net.Mixed_7c = BlockE(2048, max_pool=True)
    elif variant == "torchvision":
        net = inception_v3(weights=None, aux_logits=True, init_weights=False, num_classes=1000)
    else:
        raise ValueError(f"unknown Inception variant {variant!r}")
    net.transform_input = False  # inputs come in [-1, 1], the range both weight sets expect
    return net


class InceptionFeatures:
    """2048-d pool features of [-1, 1] images, batched on a device."""

    def __init__(self, path: Path, device: torch.device | str = "cpu") -> None:
        self.path = Path(path)
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DenoisekitError(
                f"{self.path}: not a readable Inception-v3 weights file ({type(exc).__name__})"
            ) from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        fc = state.get("fc.weight") if isinstance(state, dict) else None
        if fc is None:
            raise DenoisekitError(f"{self.path}: not an Inception-v3 state dict (no fc.weight)")
        self.variant = "fid" if fc.shape[0] == 1008 else "torchvision"
        net = build_inception(self.variant)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise DenoisekitError(
                f"{self.path}: does not fit Inception-v3 ({self.variant}): {first[:200]}"
            ) from exc
        net.fc = nn.Identity()
        self.net = net.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.key = f"inception-{self.variant}-{self.path.name}-{self.path.stat().st_size}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
        """Features ``(N, 2048)`` (CPU, float32) of ``(N, C, H, W)`` images in [-1, 1]."""
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(self.device, torch.float32)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            elif x.shape[1] != 3:
                raise DenoisekitError(
                    f"Inception features need 1- or 3-channel images, got {x.shape[1]} channels"
                )
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            out.append(self.net(x).float().cpu())
        return torch.cat(out)


def load_inception(path: Path, device: torch.device | str = "cpu") -> InceptionFeatures:
    """The feature extractor of a weights file (memoized per file and device)."""
    key = (str(Path(path).resolve()), str(device))
    if key not in _LOADED:
        _LOADED[key] = InceptionFeatures(path, device)
    return _LOADED[key]
