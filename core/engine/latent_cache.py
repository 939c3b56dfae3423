"""The latent cache of a latent run (``[latent] cache = true``), owned here: the posterior
``q(z|x)`` of every training image, encoded once by the frozen autoencoder.

* **What**: per image its posterior's ``mean`` and ``logvar`` (float16 safetensors) and its
  label; the run draws a fresh ``z ~ q(z|x)`` from them at every step (or takes the mean),
  exactly as it would from the encoder's output.
* **Where**: ``<cache folder>/latents/<key>.safetensors``, the denoisekit cache folder
  (``$DENOISEKIT_CACHE``, see :func:`~denoisekit.files.default_cache_dir`),
  so that runs on the same autoencoder and data share it.
* **Key** (:func:`cache_key`): the autoencoder's weights hash, the resolved ``[data]``
  table (its type and every option, the transforms included: size, crop, flips), the
  folder its relative paths are read from, the number of images and the cache format. Any
  change gives another key: the cache is rebuilt; nothing changed: it is reused. The data's
  files themselves are not hashed: after changing them in place, delete the file.
* **Flips**: a left-right flip does not commute with the encoder (``E(flip x) != flip
  E(x)``), so where the data flips images (its ``hflip`` option, the built-in data
  plugins' name for it) the cache holds both orientations, encoded from the unflipped
  images, and each item picks the flipped one with probability ``hflip`` (torch's global
  generator, seeded per DataLoader worker, as the data plugins flip). Any other random
  augmentation of a data plugin is not seen by the cache: use ``cache = false`` there.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from denoisekit.files import default_cache_dir, load_safetensors, save_safetensors

log = logging.getLogger(__name__)

#: The cache's format; a change of layout bumps it (older files are then not read).
CACHE_FORMAT = 1
#: The data option of a left-right flip's probability (the built-in data plugins').
FLIP_OPTION = "hflip"


def cache_key(
    autoencoder_sha256: str, data_table: Mapping[str, Any], root: Path, num_images: int
) -> str:
    """The cache's key: a hash of everything its content depends on (module docstring)."""
    payload = {
        "format": CACHE_FORMAT,
        "autoencoder": autoencoder_sha256,
        "data": data_table,
        "root": str(Path(root).resolve()),
        "num_images": num_images,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def cache_path(key: str, cache_dir: Path | None = None) -> Path:
    """The cache file of ``key`` in the cache folder (default: the denoisekit one)."""
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    return folder / "latents" / f"{key}.safetensors"


class LatentCacheData(Dataset):
    """Cached posteriors as a map-style dataset of ``(params, label)``: ``params`` is the
    float32 ``(2 C, h, w)`` concatenation of ``mean`` and ``logvar``; of the flipped image
    with probability ``hflip`` where the cache holds both orientations."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], hflip: float) -> None:
        self.mean, self.logvar = tensors["mean"], tensors["logvar"]  # (N, O, C, h, w)
        self.labels = tensors["labels"].tolist()
        self.hflip = hflip if self.mean.shape[1] == 2 else 0.0

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        side = 1 if self.hflip > 0.0 and float(torch.rand(())) < self.hflip else 0
        params = torch.cat([self.mean[index, side], self.logvar[index, side]])
        return params.float(), self.labels[index]


@torch.no_grad()
def encode_dataset(
    autoencoder: Any, data: Any, *, both_sides: bool, device: torch.device, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Every item's posterior (``mean``, ``logvar``: float16 ``(N, O, C, h, w)``, ``O = 2``
    with the flipped images) and ``labels`` (int64), in the data's order."""
    means, logvars, labels = [], [], []
    for images, label in DataLoader(data, batch_size=batch_size, shuffle=False):
        images = images.to(device)
        sides = [images, images.flip(-1)] if both_sides else [images]
        posteriors = [autoencoder.encode(x) for x in sides]
        means.append(torch.stack([p.mean for p in posteriors], 1).half().cpu())
        logvars.append(torch.stack([p.logvar for p in posteriors], 1).half().cpu())
        labels.append(torch.as_tensor(label, dtype=torch.int64))
    return {"mean": torch.cat(means), "logvar": torch.cat(logvars), "labels": torch.cat(labels)}


def cached_latents(
    autoencoder: Any,
    data: Any,
    *,
    key: str,
    hflip: float,
    device: torch.device,
    cache_dir: Path | None = None,
) -> tuple[LatentCacheData, Path, bool]:
    """The cache of ``key``: read when its file exists, else encoded from ``data`` (the
    unflipped images) and written atomically. Returns the dataset, the file and whether it
    was built now."""
    path = cache_path(key, cache_dir)
    if path.is_file():
        tensors = load_safetensors(path)
        if len(tensors.get("labels", ())) == len(data):
            log.info("latent cache: reusing %s", path)
            return LatentCacheData(tensors, hflip), path, False
    log.info("latent cache: encoding %d images into %s", len(data), path)
    tensors = encode_dataset(autoencoder, data, both_sides=hflip > 0.0, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(path, tensors)
    return LatentCacheData(tensors, hflip), path, True
