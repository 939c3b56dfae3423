"""Standard image datasets through ``torchvision.datasets`` (``type = "torchvision"``).

Wraps MNIST, FashionMNIST, KMNIST, CIFAR10, CIFAR100, SVHN, STL10, CelebA and Flowers102.
Reads the files torchvision's classes expect under ``root`` (relative to the recipe's folder
unless absolute); nothing is downloaded unless ``download = true``. Missing or corrupt files
end in one :class:`~denoisekit.errors.DataError` line naming the expected place. MNIST,
FashionMNIST and KMNIST are read from their idx files directly, gzipped or not, in
torchvision's ``<root>/<Name>/raw/`` or in ``root`` itself (Debian's
``dataset-fashion-mnist`` folder): see :mod:`denoisekit.plugins.data.idx_files`.

``train = True`` selects each dataset's training split, otherwise its test split; ``split``
overrides with any split name the dataset has (e.g. ``"extra"`` for SVHN,
``"unlabeled"`` for STL10, ``"all"`` for CelebA). CelebA is used unlabelled (label -1).
Images go through Pillow: optional channel conversion (``channels``), resize to
``image_size`` (antialiased bicubic, center crop or stretch), left-right flip with
probability ``hflip`` when training, then [-1, 1].

Recipe example::

    [data]
    type = "torchvision"
    name = "CIFAR10"
    root = "data"
    hflip = 0.5       # as in DDPM's CIFAR-10 runs
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from denoisekit import NULL_CLASS, ComponentSpec, hookimpl
from denoisekit.config import int_at_least, option, unit_interval
from denoisekit.errors import DataError
from denoisekit.plugins.data._transforms import fit_square, pil_to_tensor, random_hflip
from denoisekit.plugins.data.idx_files import IdxDataset, load_split


@attrs.frozen(kw_only=True)
class _DatasetInfo:
    """How one torchvision dataset class is called and what it holds."""

    split_arg: bool  # True: ``split=<name>``; False: ``train=<bool>``
    splits: tuple[str, ...]  # names the ``split`` option accepts; [0] train, [1] test
    test_split: str
    num_classes: int | None  # None: used unlabelled
    native_shape: tuple[int, int, int] | None  # None: sizes vary
    files: str  # where torchvision expects the files, relative to root
    extra: tuple[tuple[str, Any], ...] = ()  # further constructor keywords


_TRAIN_TEST = ("train", "test")

DATASETS: dict[str, _DatasetInfo] = {
    "MNIST": _DatasetInfo(
        split_arg=False,
        splits=_TRAIN_TEST,
        test_split="test",
        num_classes=10,
        native_shape=(1, 28, 28),
        files="MNIST/raw/",
    ),
    "FashionMNIST": _DatasetInfo(
        split_arg=False,
        splits=_TRAIN_TEST,
        test_split="test",
        num_classes=10,
        native_shape=(1, 28, 28),
        files="FashionMNIST/raw/",
    ),
    "KMNIST": _DatasetInfo(
        split_arg=False,
        splits=_TRAIN_TEST,
        test_split="test",
        num_classes=10,
        native_shape=(1, 28, 28),
        files="KMNIST/raw/",
    ),
    "CIFAR10": _DatasetInfo(
        split_arg=False,
        splits=_TRAIN_TEST,
        test_split="test",
        num_classes=10,
        native_shape=(3, 32, 32),
        files="cifar-10-batches-py/",
    ),
    "CIFAR100": _DatasetInfo(
        split_arg=False,
        splits=_TRAIN_TEST,
        test_split="test",
        num_classes=100,
        native_shape=(3, 32, 32),
        files="cifar-100-python/",
    ),
    "SVHN": _DatasetInfo(
        split_arg=True,
        splits=("train", "test", "extra"),
        test_split="test",
        num_classes=10,
        native_shape=(3, 32, 32),
        files="<split>_32x32.mat",
    ),
    "STL10": _DatasetInfo(
        split_arg=True,
        splits=("train", "test", "unlabeled", "train+unlabeled"),
        test_split="test",
        num_classes=10,
        native_shape=(3, 96, 96),
        files="stl10_binary/",
    ),
    "CelebA": _DatasetInfo(
        split_arg=True,
        splits=("train", "test", "valid", "all"),
        test_split="test",
        num_classes=None,
        native_shape=(3, 218, 178),
        files="celeba/ (img_align_celeba/ and the list_*.txt files)",
        extra=(("target_type", []),),
    ),
    "Flowers102": _DatasetInfo(
        split_arg=True,
        splits=("train", "test", "val"),
        test_split="test",
        num_classes=102,
        native_shape=None,
        files="flowers-102/",
    ),
}

#: Read from their idx files (gzipped or not, torchvision's folder or a flat one): see
#: :mod:`denoisekit.plugins.data.idx_files`.
IDX_DATASETS = ("MNIST", "FashionMNIST", "KMNIST")

_BY_LOWER = {name.lower(): name for name in DATASETS}


def _canonical_name(value: Any) -> Any:
    """Accept dataset names in any case ("cifar10" -> "CIFAR10")."""
    return _BY_LOWER.get(value.lower(), value) if isinstance(value, str) else value


def _check_name(inst: Any, attribute: attrs.Attribute, value: str) -> None:
    if value not in DATASETS:
        raise ValueError(f"'{attribute.name}' must be one of {', '.join(DATASETS)}: {value!r}")


def _check_split(inst: Any, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None and value not in DATASETS[inst.name].splits:
        raise ValueError(
            f"'{attribute.name}' of {inst.name} must be one of "
            f"{', '.join(DATASETS[inst.name].splits)}: {value!r}"
        )


def _check_image_size(inst: Any, attribute: attrs.Attribute, value: int | None) -> None:
    if value is None:
        if DATASETS[inst.name].native_shape is None:
            raise ValueError(
                f"'{attribute.name}' must be set for {inst.name}: its images vary in size"
            )
        return
    int_at_least(1)(inst, attribute, value)


@attrs.frozen(kw_only=True)
class TorchvisionDataConfig:
    """Options of ``type = "torchvision"``."""

    name: str = option(
        "CIFAR10",
        "dataset: " + ", ".join(DATASETS) + " (any case)",
        validator=_check_name,
        converter=_canonical_name,
    )
    root: str = option("data", "folder of the dataset files, relative to the recipe's folder")
    download: bool = option(False, "download the files into root when they are missing")
    split: str | None = option(
        None, "the dataset's split name; unset = its train/test split", validator=_check_split
    )
    image_size: int | None = option(
        None, "side of the square images (unset = native size)", validator=_check_image_size
    )
    center_crop: bool = option(
        True, "when resizing non-square images: crop the center (else stretch)"
    )
    channels: int | None = option(
        None,
        "1 (grey) or 3 (RGB); unset = native",
        validator=attrs.validators.optional(attrs.validators.in_((1, 3))),
    )
    hflip: float = option(
        0.0, "probability of a left-right flip (training only)", validator=unit_interval
    )


def image_shape(config: TorchvisionDataConfig) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images after conversion and resizing."""
    native = DATASETS[config.name].native_shape or (3, config.image_size, config.image_size)
    size = (config.image_size, config.image_size) if config.image_size else native[1:]
    return (config.channels or native[0], size[0], size[1])  # type: ignore[return-value]


def torchvision_facts(config: TorchvisionDataConfig) -> dict[str, Any]:
    """The image shape and the class count, from the config (nothing is read)."""
    return {"image_shape": image_shape(config), "num_classes": DATASETS[config.name].num_classes}


class TorchvisionDataset(torch.utils.data.Dataset):
    """A torchvision dataset as ``(image C×H×W in [-1, 1], label)`` pairs.

    Attributes:
        base: the wrapped ``torchvision.datasets`` object.
        num_classes: the dataset's class count, or ``None`` when used unlabelled.
        image_shape: ``(C, H, W)`` after conversion and resizing.
    """

    def __init__(self, base: Any, config: TorchvisionDataConfig, *, train: bool) -> None:
        info = DATASETS[config.name]
        self.base = base
        self.num_classes: int | None = info.num_classes
        self.image_shape: tuple[int, int, int] = image_shape(config)
        self._mode = "L" if self.image_shape[0] == 1 else "RGB"
        self._size = config.image_size
        self._center_crop = config.center_crop
        self._labelled = info.num_classes is not None
        self.hflip = config.hflip if train else 0.0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = self.base[index]
        img = img.convert(self._mode)
        if self._size is not None:
            img = fit_square(img, self._size, center_crop=self._center_crop)
        x = random_hflip(pil_to_tensor(img), self.hflip)
        label = int(target) if self._labelled and target is not None else NULL_CLASS
        return x, label


def build_torchvision_data(
    config: TorchvisionDataConfig, *, root: Path | None = None, train: bool = True
) -> TorchvisionDataset:
    """Build the dataset from the files under ``config.root``.

    Args:
        config: the options.
        root: the recipe's folder, against which a relative ``config.root`` is resolved
            (the working directory when ``None``).
        train: the training split (and random flips) or the test split.

    Raises:
        DataError: the files are missing or corrupt, or the download failed.
    """
    import torchvision.datasets

    info = DATASETS[config.name]
    folder = Path(config.root).expanduser()
    if not folder.is_absolute():
        folder = (Path(root) if root is not None else Path.cwd()) / folder
    split = config.split or (info.splits[0] if train else info.test_split)
    kwargs: dict[str, Any] = {k: list(v) if isinstance(v, list) else v for k, v in info.extra}
    if info.split_arg:
        kwargs["split"] = split
    else:
        kwargs["train"] = split == "train"
    cls = getattr(torchvision.datasets, config.name)
    expected = folder / info.files.replace("<split>", split)
    idx = config.name in IDX_DATASETS
    if idx and not config.download:
        return _idx_dataset(config, folder, split, train=train)
    try:
        base = cls(str(folder), download=config.download, **kwargs)
    except (RuntimeError, OSError) as exc:
        reason = " ".join(str(exc).split())
        if config.download:
            raise DataError(
                f"torchvision: could not download {config.name} into {folder} ({reason}); "
                f"check the network, or place the files at {expected}"
            ) from exc
        # torchvision's own RuntimeError text suggests ``download=True``: ours says it better.
        detail = "" if isinstance(exc, RuntimeError) else f" ({reason})"
        raise DataError(
            f"torchvision: {config.name} files not found or corrupt at {expected}{detail}; "
            f"set data.download = true to download them, or data.root to the folder holding them"
        ) from exc
    if idx:  # downloaded into torchvision's layout: read as any idx files
        return _idx_dataset(config, folder, split, train=train)
    return TorchvisionDataset(base, config, train=train)


def _idx_dataset(
    config: TorchvisionDataConfig, folder: Path, split: str, *, train: bool
) -> IdxDataset:
    images, labels = load_split(config.name, folder, split)
    return IdxDataset(
        images,
        labels,
        size=config.image_size,
        channels=config.channels or 1,
        hflip=config.hflip if train else 0.0,
    )


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``torchvision``."""
    return [
        ComponentSpec(
            kind="data",
            name="torchvision",
            config=TorchvisionDataConfig,
            build=build_torchvision_data,
            facts=torchvision_facts,
            summary="torchvision datasets (MNIST, CIFAR10, CelebA, ...) from local files.",
        )
    ]
