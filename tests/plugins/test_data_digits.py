"""The bundled digits: split sizes, stratification, value mapping, resizing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from denoisekit.plugins.data import digits as digits_mod
from denoisekit.plugins.data.digits import DigitsConfig, build_digits, split_indices


@pytest.fixture(scope="module")
def bunch():
    return load_digits()


@pytest.fixture(scope="module")
def train_set():
    return build_digits(DigitsConfig(), root=Path("."), train=True)


@pytest.fixture(scope="module")
def test_set():
    return build_digits(DigitsConfig(), root=Path("."), train=False)


def test_registration() -> None:
    (spec,) = digits_mod.denoisekit_components()
    assert (spec.kind, spec.name, spec.config) == ("data", "digits", DigitsConfig)


def test_split_sizes(train_set, test_set) -> None:
    assert len(train_set) == 1437
    assert len(test_set) == 360
    assert len(build_digits(DigitsConfig(split="all"))) == 1797


def test_split_override() -> None:
    assert len(build_digits(DigitsConfig(split="test"), train=True)) == 360
    assert len(build_digits(DigitsConfig(split="train"), train=False)) == 1437


def test_splits_partition_the_data(bunch) -> None:
    train = split_indices(bunch.target, "train")
    test = split_indices(bunch.target, "test")
    assert len(set(train.tolist()) | set(test.tolist())) == 1797
    assert not set(train.tolist()) & set(test.tolist())
    np.testing.assert_array_equal(train, split_indices(bunch.target, "train"))  # fixed seed


def test_split_is_the_documented_one(bunch) -> None:
    # Golden values of train_test_split(test_size=0.2, stratify=labels, random_state=0):
    # the test set must not drift between versions (evaluation numbers depend on it).
    test = split_indices(bunch.target, "test")
    assert test[:8].tolist() == [1496, 188, 705, 820, 413, 744, 1466, 500]
    assert int(test.sum()) == 337944


def test_split_is_stratified(bunch, train_set, test_set) -> None:
    full = Counter(bunch.target.tolist())
    train = Counter(train_set.labels.tolist())
    test = Counter(test_set.labels.tolist())
    assert sorted(full) == list(range(10))
    for c, n in full.items():
        assert train[c] + test[c] == n
        assert abs(test[c] - 0.2 * n) <= 1, (c, test[c], n)


def test_items_shape_type_and_range(train_set) -> None:
    assert train_set.num_classes == 10
    assert train_set.image_shape == (1, 8, 8)
    x, y = train_set[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y <= 9
    assert train_set.images.min() == -1.0 and train_set.images.max() == 1.0


def test_values_map_0_16_to_unit_range(bunch, test_set) -> None:
    idx = split_indices(bunch.target, "test")
    for k in (0, 17, 359):
        raw = torch.as_tensor(bunch.images[idx[k]], dtype=torch.float32)
        x, y = test_set[k]
        torch.testing.assert_close(x[0], raw / 8 - 1)  # 0 -> -1, 8 -> 0, 16 -> 1
        assert y == bunch.target[idx[k]]


@pytest.mark.parametrize("size", [4, 16, 28])
def test_resize(size: int, test_set) -> None:
    resized = build_digits(DigitsConfig(image_size=size), train=False)
    assert resized.image_shape == (1, size, size)
    assert resized.images.shape == (360, 1, size, size)
    assert resized.images.min() >= -1.0 and resized.images.max() <= 1.0
    assert resized.labels.tolist() == test_set.labels.tolist()
    # Resampling keeps each image's mean brightness (bilinear weights sum to one).
    mean_diff = (resized.images.mean(dim=(1, 2, 3)) - test_set.images.mean(dim=(1, 2, 3))).abs()
    assert mean_diff.max() < 0.1


def test_dataloader_batches(train_set) -> None:
    loader = torch.utils.data.DataLoader(train_set, batch_size=16, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == (16, 1, 8, 8) and y.shape == (16,) and y.dtype == torch.int64


@pytest.mark.parametrize(
    ("field", "value"), [("image_size", 0), ("image_size", 2.5), ("split", "valid")]
)
def test_options_rejected(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"'{field}'"):
        DigitsConfig(**{field: value})


@pytest.mark.parametrize("split", [None, "train", "test", "all", "fit", "val"])
def test_facts_match_the_built_dataset(split) -> None:
    """What the recipe check relies on (shape, classes, training-split size) is true."""
    (spec,) = digits_mod.denoisekit_components()
    config = DigitsConfig(split=split, image_size=4)
    facts = spec.facts(config)
    built = build_digits(config, train=True)
    assert facts == {
        "image_shape": built.image_shape,
        "num_classes": built.num_classes,
        "num_images": len(built),
    }


def test_fit_and_val_split_the_training_split_stratified() -> None:
    from sklearn.datasets import load_digits

    from denoisekit.plugins.data.digits import SPLIT_SIZES, split_indices

    labels = load_digits().target
    fit, val = split_indices(labels, "fit"), split_indices(labels, "val")
    train, test = split_indices(labels, "train"), split_indices(labels, "test")
    assert (len(fit), len(val)) == (SPLIT_SIZES["fit"], SPLIT_SIZES["val"])
    assert sorted([*fit, *val]) == sorted(train) and not set(val) & set(test)
    counts = [int((labels[val] == c).sum()) for c in range(10)]
    assert max(counts) - min(counts) <= 2  # stratified: 28-29 of each digit
