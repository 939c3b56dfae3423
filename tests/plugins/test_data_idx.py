"""The MNIST family from idx files: gzipped or not, torchvision's folder or a flat one,
and one error line for a missing, truncated or foreign file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from denoisekit.errors import DataError
from denoisekit.plugins.data.idx_files import read_idx
from denoisekit.plugins.data.torchvision_data import TorchvisionDataConfig, build_torchvision_data

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the big-endian idx format, written independently of the reader."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool):
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in (
        (f"{prefix}-images-idx3-ubyte", images),
        (f"{prefix}-labels-idx1-ubyte", labels),
    ):
        data = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


def fake(folder: Path, gz: bool, n_train: int = 6, n_test: int = 4) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_split(folder, prefix, images, labels, gz)
        out[prefix] = (images, labels)
    return out


def build(root: Path, train: bool = True, **options):
    return build_torchvision_data(
        TorchvisionDataConfig(name="FashionMNIST", root=str(root), **options), train=train
    )


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_reads_gzipped_or_plain_in_either_layout(tmp_path: Path, gz: bool, layout: str) -> None:
    folder = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    arrays = fake(folder, gz)
    for train, prefix in ((True, "train"), (False, "t10k")):
        ds = build(tmp_path, train=train)
        images, labels = arrays[prefix]
        assert len(ds) == len(labels) and ds.image_shape == (1, 28, 28) and ds.num_classes == 10
        x, y = ds[1]
        assert y == int(labels[1]) and isinstance(y, int)
        torch.testing.assert_close(x[0], torch.from_numpy(images[1]).float() / 127.5 - 1.0)


def test_read_idx_exact(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(tmp_path / "a", 3), array)


def test_resized_and_rgb(tmp_path: Path) -> None:
    fake(tmp_path, gz=True)
    ds = build(tmp_path, image_size=32, channels=3)
    x, _ = ds[0]
    assert ds.image_shape == (3, 32, 32) and x.shape == (3, 32, 32)
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x[0], x[2])


def test_hflip_training_only(tmp_path: Path) -> None:
    arrays = fake(tmp_path, gz=False)
    flipped = build(tmp_path, hflip=1.0)[0][0][0]
    torch.testing.assert_close(
        flipped, torch.from_numpy(arrays["train"][0][0][:, ::-1].copy()).float() / 127.5 - 1
    )
    kept = build(tmp_path, train=False, hflip=1.0)[0][0][0]
    torch.testing.assert_close(kept, torch.from_numpy(arrays["t10k"][0][0]).float() / 127.5 - 1)


def _error(root: Path) -> str:
    with pytest.raises(DataError) as info:
        build(root)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_missing_file_names_it_and_the_package(tmp_path: Path) -> None:
    fake(tmp_path, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    msg = _error(tmp_path)
    assert "train-labels-idx1-ubyte" in msg and str(tmp_path) in msg
    assert "apt-get install dataset-fashion-mnist" in msg


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file(tmp_path: Path, gz: bool) -> None:
    fake(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    if gz:
        path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    else:
        path.write_bytes(path.read_bytes()[:-100])
    msg = _error(tmp_path)
    assert name in msg and "truncated" in msg


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    fake(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])  # an interrupted download
    msg = _error(tmp_path)
    assert str(path) in msg and "unreadable" in msg


def test_wrong_magic_number(tmp_path: Path) -> None:
    fake(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[2] = 0x0D  # float elements
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: not an idx file .*0x00000d03"):
        build(tmp_path, train=False)


def test_labels_and_images_swapped(tmp_path: Path) -> None:
    fake(tmp_path, gz=False)
    images, labels = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    a, b = images.read_bytes(), labels.read_bytes()
    images.write_bytes(b)
    labels.write_bytes(a)
    assert "not an idx file of 3-d" in _error(tmp_path)


def test_count_mismatch(tmp_path: Path) -> None:
    arrays = fake(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(arrays["train"][1][:3]))
    assert "6 images but 3 labels" in _error(tmp_path)


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_package_folder() -> None:
    ds = build(DEBIAN, train=False)
    assert len(ds) == 10_000 and ds.image_shape == (1, 28, 28)
    assert sorted(set(ds.labels.tolist())) == list(range(10))
