"""torchvision datasets, offline: tiny fakes in the exact on-disk formats torchvision reads."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets

from denoisekit.errors import DataError
from denoisekit.plugins.data import torchvision_data as tv_mod
from denoisekit.plugins.data.torchvision_data import TorchvisionDataConfig, build_torchvision_data


def build(recipe_dir: Path, train: bool = True, **options):
    return build_torchvision_data(TorchvisionDataConfig(**options), root=recipe_dir, train=train)


def test_registration() -> None:
    (spec,) = tv_mod.denoisekit_components()
    assert (spec.kind, spec.name) == ("data", "torchvision")


# --------------------------------------------------------------------------- MNIST (idx files)


def _idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the big-endian IDX format of LeCun's MNIST files."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(
        struct.pack(">I", n) for n in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_mnist(root: Path, folder: str = "MNIST", n_train: int = 5, n_test: int = 3) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for k in range(n):
            images[k, k, :] = 255  # row k white: identifies the image
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) * 3 + 1) % 10)


def test_mnist_native(tmp_path: Path) -> None:
    fake_mnist(tmp_path / "data")
    ds = build(tmp_path, name="MNIST")
    assert len(ds) == 5 and ds.num_classes == 10 and ds.image_shape == (1, 28, 28)
    x, y = ds[2]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    want = -torch.ones(1, 28, 28)
    want[0, 2, :] = 1.0
    torch.testing.assert_close(x, want)  # 0 -> -1, 255 -> 1 exactly
    assert y == 7 and isinstance(y, int)
    assert len(build(tmp_path, train=False, name="MNIST")) == 3
    assert len(build(tmp_path, train=True, name="MNIST", split="test")) == 3


def test_name_in_any_case_and_fashion_folder(tmp_path: Path) -> None:
    fake_mnist(tmp_path / "data", folder="FashionMNIST", n_train=4)
    assert TorchvisionDataConfig(name="fashionmnist").name == "FashionMNIST"
    assert len(build(tmp_path, name="fashionmnist")) == 4


def test_mnist_to_rgb_and_resized(tmp_path: Path) -> None:
    fake_mnist(tmp_path / "data")
    ds = build(tmp_path, name="MNIST", channels=3, image_size=14)
    assert ds.image_shape == (3, 14, 14)
    x, _ = ds[0]
    assert x.shape == (3, 14, 14)
    torch.testing.assert_close(x[0], x[1])
    torch.testing.assert_close(x[0], x[2])
    assert x.min() >= -1 and x.max() <= 1
    assert x[:, 0, :].mean() > x[:, 7:, :].mean()  # the white row stays at the top


def test_absolute_root(tmp_path: Path) -> None:
    fake_mnist(tmp_path / "elsewhere")
    ds = build(tmp_path / "recipe", name="MNIST", root=str(tmp_path / "elsewhere"))
    assert len(ds) == 5


# --------------------------------------------------------------------------- CIFAR-10 (pickles)


def fake_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch, n: int = 4) -> None:
    """Pickled batches as in cifar-10-python.tar.gz: rows of 1024 R, 1024 G, 1024 B values.

    torchvision checks each file's md5 against its class table, so the table is pointed at
    the fakes' checksums.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def write(name: str, obj) -> list[str]:
        data = pickle.dumps(obj)
        (folder / name).write_bytes(data)
        return [name, hashlib.md5(data).hexdigest()]

    def batch(offset: int):
        data = np.zeros((n, 3, 32, 32), dtype=np.uint8)
        for k in range(n):
            data[k, k % 3, 0, 0] = 255  # top-left pixel: red, green, blue, red, ...
            data[k, :, 31, 31] = (10 * k + offset) % 256
        return {"data": data.reshape(n, 3072), "labels": [(k + offset) % 10 for k in range(n)]}

    train = [write(f"data_batch_{i}", batch(i)) for i in range(1, 6)]
    test = [write("test_batch", batch(0))]
    meta_name, meta_md5 = write("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", train)
    monkeypatch.setattr(cls, "test_list", test)
    monkeypatch.setattr(cls, "meta", {"filename": meta_name, "key": "label_names", "md5": meta_md5})


def test_cifar10_rgb_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cifar10(tmp_path / "data", monkeypatch)
    ds = build(tmp_path, name="cifar10")
    assert len(ds) == 20 and ds.num_classes == 10 and ds.image_shape == (3, 32, 32)
    for k, rgb in enumerate([(1, -1, -1), (-1, 1, -1), (-1, -1, 1)]):
        x, y = ds[k]
        assert x.shape == (3, 32, 32)
        torch.testing.assert_close(x[:, 0, 0], torch.tensor(rgb, dtype=torch.float32))
        assert y == (k + 1) % 10  # data_batch_1 labels start at 1
    test = build(tmp_path, train=False, name="CIFAR10")
    assert len(test) == 4 and test[1][1] == 1


def test_cifar10_to_grey_and_hflip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cifar10(tmp_path / "data", monkeypatch)
    grey = build(tmp_path, name="CIFAR10", channels=1)
    assert grey.image_shape == (1, 32, 32)
    x, _ = grey[0]
    # ITU-R 601-2 luma of pure red: 299/1000 * 255 = 76.2 -> 76
    assert x.shape == (1, 32, 32) and x[0, 0, 0].item() == pytest.approx(76 / 127.5 - 1)
    flipped = build(tmp_path, name="CIFAR10", hflip=1.0)[0][0]
    kept = build(tmp_path, train=False, name="CIFAR10", hflip=1.0)  # no flips in evaluation
    torch.testing.assert_close(flipped[:, 0, 31], torch.tensor([1.0, -1.0, -1.0]))
    assert kept.hflip == 0.0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "where"), [("MNIST", "MNIST/raw"), ("CIFAR10", "cifar-10-batches-py")]
)
def test_missing_files_is_one_line(tmp_path: Path, name: str, where: str) -> None:
    with pytest.raises(DataError) as info:
        build(tmp_path, name=name)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(tmp_path / "data" / where) in msg
    assert "data.download = true" in msg


def test_corrupt_cifar_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"garbage")  # md5 mismatch
    with pytest.raises(DataError, match="not found or corrupt"):
        build(tmp_path, name="CIFAR10")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "ImageNet"}, "name"),
        ({"name": "MNIST", "split": "extra"}, "split"),
        ({"name": "CelebA", "split": "val"}, "split"),
        ({"name": "Flowers102"}, "image_size"),
        ({"image_size": 0}, "image_size"),
        ({"channels": 2}, "channels"),
        ({"hflip": -0.5}, "hflip"),
    ],
)
def test_options_rejected(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"'{field}'"):
        TorchvisionDataConfig(**kwargs)


def test_options_accepted() -> None:
    TorchvisionDataConfig(name="SVHN", split="extra")
    TorchvisionDataConfig(name="celeba", split="all", image_size=64)
    TorchvisionDataConfig(name="Flowers102", image_size=64)


def test_every_listed_dataset_exists_in_torchvision() -> None:
    for name, info in tv_mod.DATASETS.items():
        assert hasattr(torchvision.datasets, name), name
        assert info.test_split in info.splits


def test_facts_match_the_dataset_and_celeba_native_fails_at_load(tmp_path: Path) -> None:
    from denoisekit.errors import RecipeError
    from denoisekit.host.recipe import load_recipe
    from denoisekit.plugins.data import torchvision_data
    from denoisekit.testing import write_recipe

    fake_mnist(tmp_path / "data")
    (spec,) = torchvision_data.denoisekit_components()
    for options in ({"name": "MNIST"}, {"name": "MNIST", "channels": 3, "image_size": 14}):
        ds = build(tmp_path, root="data", **options)
        facts = spec.facts(TorchvisionDataConfig(root="data", **options))
        assert facts == {"image_shape": ds.image_shape, "num_classes": ds.num_classes}
    # CelebA's native images are 218×178: found when loaded, not after reading the files.
    path = write_recipe(tmp_path, {"data": {"type": "torchvision", "name": "CelebA"}})
    with pytest.raises(
        RecipeError,
        match=r"data: the data gives 3×218×178 images; backbones "
        r"take square ones",
    ):
        load_recipe(path)
    mnist = {"data": {"type": "torchvision", "name": "MNIST", "image_size": 8}}
    assert load_recipe(write_recipe(tmp_path, mnist))
