"""The 8×8 handwritten digits bundled with scikit-learn (``type = "digits"``).

1,797 grey 8×8 images of the digits 0-9 (the UCI "Optical Recognition of Handwritten
Digits" test set), shipped inside scikit-learn: nothing is downloaded. Pixel values 0..16
map linearly to [-1, 1]. The split is fixed and stratified by class
(``train_test_split(test_size=0.2, stratify=labels, random_state=0)``): 1,437 training
and 360 test images; for choosing settings without the test images, the training split is
split once more the same way into ``fit`` (1,149) and ``val`` (288). The whole set is
converted to tensors once (57 KiB at 8×8), so ``__getitem__`` is an index.

Recipe example::

    [data]
    type = "digits"
    image_size = 16   # bilinear, antialiased; 8 = native
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import int_at_least, option
from denoisekit.plugins.data._transforms import resize_tensor

SPLITS = ("train", "test", "all", "fit", "val")
#: Images in each split (:func:`split_indices`); ``fit`` + ``val`` = ``train``.
SPLIT_SIZES: dict[str, int] = {"train": 1437, "test": 360, "all": 1797, "fit": 1149, "val": 288}


@attrs.frozen(kw_only=True)
class DigitsConfig:
    """Options of ``type = "digits"``."""

    image_size: int = option(
        8, "side in pixels (8 = native; else bilinear resize)", validator=int_at_least(1)
    )
    split: str | None = option(
        None,
        "train, test, all, or fit / val (train split in two, for tuning); unset = train for "
        "training, test for evaluation",
        validator=attrs.validators.optional(attrs.validators.in_(SPLITS)),
    )


class DigitsDataset(torch.utils.data.Dataset):
    """The digits as a map-style dataset of ``(image 1×S×S in [-1, 1], label 0..9)``.

    Attributes:
        images: float32 tensor N×1×S×S, all the images of the split.
        labels: int64 tensor (N,), their classes.
        num_classes: 10.
        image_shape: ``(1, S, S)``.
        classes: the class names ``("0", ..., "9")``.
    """

    num_classes: int | None = 10
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels
        self._label_list: list[int] = labels.tolist()
        self.image_shape: tuple[int, int, int] = tuple(images.shape[1:])  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self._label_list)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self._label_list[index]


def split_indices(labels: Any, split: str) -> Any:
    """Indices of ``split`` (one of :data:`SPLITS`) for the digits' ``labels``: ``fit``
    and ``val`` split ``train`` once more, stratified, 80/20."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    if split == "all":
        return indices
    train, test = train_test_split(indices, test_size=0.2, stratify=labels, random_state=0)
    if split in ("fit", "val"):
        fit, val = train_test_split(train, test_size=0.2, stratify=labels[train], random_state=0)
        return fit if split == "fit" else val
    return train if split == "train" else test


def build_digits(
    config: DigitsConfig, *, root: Path | None = None, train: bool = True
) -> DigitsDataset:
    """Build the digits dataset.

    Args:
        config: the options.
        root: the recipe folder (unused: the data ships with scikit-learn).
        train: the training split when ``config.split`` is unset, else the test split.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    split = config.split or ("train" if train else "test")
    idx = split_indices(bunch.target, split)
    # 0..16 -> [-1, 1]
    pixels = torch.as_tensor(bunch.images[idx], dtype=torch.float32)  # N×8×8
    images = (pixels / 8.0 - 1.0).unsqueeze(1)
    images = resize_tensor(images, config.image_size).contiguous()
    labels = torch.as_tensor(bunch.target[idx], dtype=torch.int64)
    return DigitsDataset(images, labels)


def digits_facts(config: DigitsConfig) -> dict[str, Any]:
    """Shape, classes and the training split's size, known without loading anything."""
    return {
        "image_shape": (1, config.image_size, config.image_size),
        "num_classes": DigitsDataset.num_classes,
        "num_images": SPLIT_SIZES[config.split or "train"],
    }


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``digits``."""
    return [
        ComponentSpec(
            kind="data",
            name="digits",
            config=DigitsConfig,
            build=build_digits,
            facts=digits_facts,
            summary="scikit-learn's bundled 8×8 handwritten digits (1,437 train / 360 test).",
        )
    ]
