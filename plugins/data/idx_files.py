"""The MNIST family (MNIST, FashionMNIST, KMNIST) read straight from LeCun's idx files.

The four files of a dataset — ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, gzipped
(``.gz``) or not — are looked for in ``<root>/<Name>/raw/`` (torchvision's layout), then in
``<root>`` itself (the layout of Debian's ``dataset-fashion-mnist``:
``/usr/share/datasets/fashion-mnist/``). Nothing is unpacked or moved.

The idx format (http://yann.lecun.com/exdb/mnist/): a big-endian header — two zero bytes,
the element type (``0x08``: unsigned byte), the number of dimensions ``d`` — then ``d``
big-endian uint32 sizes, then the data. Images are ``N×28×28`` (``d = 3``), labels ``N``
(``d = 1``). A missing, truncated or foreign file ends in one :class:`DataError` line
naming the file and how to get the dataset.

The whole split is held as one uint8 tensor (47 MB for 60,000 images), so
``__getitem__`` is an index and a conversion, not a PIL round trip.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from denoisekit.errors import DataError
from denoisekit.plugins.data._transforms import random_hflip, resize_tensor

#: Element type code 0x08 (unsigned byte): the only one the MNIST family uses.
UBYTE = 0x08
#: ``(images, labels)`` file stems of each split.
STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: How to get each dataset's files, for the error line.
INSTALL = {
    "FashionMNIST": "install Debian's package (apt-get install dataset-fashion-mnist; files in "
    "/usr/share/datasets/fashion-mnist) and set data.root to its folder, or set "
    "data.download = true",
    "MNIST": "set data.download = true to download them, or data.root to the folder holding them",
    "KMNIST": "set data.download = true to download them, or data.root to the folder holding them",
}


def read_idx(path: Path | str, ndim: int) -> np.ndarray:
    """The uint8 array of an idx file (gzipped when its name ends in ``.gz``).

    Args:
        path: the file.
        ndim: the number of dimensions it must have (3: images, 1: labels).

    Raises:
        DataError: the file is unreadable, not an idx file of ``ndim`` unsigned-byte
            dimensions, or shorter than its header says.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:  # gzip's BadGzipFile is an OSError
        raise DataError(f"{path}: unreadable idx file ({' '.join(str(exc).split())})") from exc
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise DataError(f"{path}: truncated idx file ({len(data)} bytes, no magic number)")
    zeros, dtype, dims = struct.unpack(">HBB", data[:4])
    if zeros != 0 or dtype != UBYTE or dims != ndim:
        raise DataError(
            f"{path}: not an idx file of {ndim}-d unsigned bytes (magic number "
            f"0x{int.from_bytes(data[:4], 'big'):08x}, expected 0x{(UBYTE << 8) | ndim:08x})"
        )
    if len(data) < header:
        raise DataError(f"{path}: truncated idx file ({len(data)} bytes, no complete header)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    size = int(np.prod(shape))
    if len(data) - header < size:
        raise DataError(
            f"{path}: truncated idx file ({len(data) - header} of {size} data bytes for "
            f"shape {shape})"
        )
    return np.frombuffer(data, dtype=np.uint8, count=size, offset=header).reshape(shape)


def find_file(folders: list[Path], stem: str) -> Path | None:
    """The first ``<folder>/<stem>`` or ``<folder>/<stem>.gz`` that exists."""
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_split(name: str, folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of one split of ``name``.

    Args:
        name: MNIST, FashionMNIST or KMNIST (its torchvision folder name).
        folder: the dataset root: files in ``folder/<name>/raw`` or ``folder`` itself.
        split: ``"train"`` or ``"test"``.

    Raises:
        DataError: a file is missing, corrupt, or the two disagree on the image count.
    """
    folders = [folder / name / "raw", folder]
    arrays = []
    for stem, ndim in zip(STEMS[split], (3, 1), strict=True):
        path = find_file(folders, stem)
        if path is None:
            raise DataError(
                f"{name}: {stem}[.gz] not found in {folders[0]} or {folders[1]}; {INSTALL[name]}"
            )
        arrays.append(read_idx(path, ndim))
    images, labels = arrays
    if len(images) != len(labels):
        raise DataError(
            f"{name}: {len(images)} images but {len(labels)} labels in the {split} split "
            f"under {folder}; {INSTALL[name]}"
        )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class IdxDataset(torch.utils.data.Dataset):
    """A split of an MNIST-family dataset as ``(image C×S×S in [-1, 1], label)`` pairs.

    Attributes:
        images: uint8 ``(N, C, S, S)``, resized and channel-expanded once at build.
        labels: int64 ``(N,)``.
        num_classes: 10.
        image_shape: ``(C, S, S)``.
        hflip: probability of a left-right flip per item.
    """

    num_classes: int | None = 10

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        size: int | None,
        channels: int,
        hflip: float,
    ) -> None:
        x = images.unsqueeze(1)
        if size is not None and x.shape[-1] != size:
            resized = []
            for chunk in x.split(4096):  # bounded float memory
                y = resize_tensor(chunk.float().div_(127.5).sub_(1.0), size)
                resized.append(y.add_(1.0).mul_(127.5).round_().to(torch.uint8))
            x = torch.cat(resized)
        self.images = x.expand(-1, channels, -1, -1) if channels != 1 else x
        self.labels = labels
        self._label_list: list[int] = labels.tolist()
        self.image_shape: tuple[int, int, int] = tuple(self.images.shape[1:])  # type: ignore[assignment]
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self._label_list)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].to(torch.float32).div_(127.5).sub_(1.0)
        return random_hflip(x, self.hflip), self._label_list[index]
