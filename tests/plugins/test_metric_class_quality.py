"""``class-quality``: a classifier of any labelled data judges samples against the held-out
split; checked on the bundled digits, whose training split trains the classifier in
seconds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from denoisekit.contracts import SampleSet
from denoisekit.engine.evaluation import EvalContext
from denoisekit.engine.reference import reference_recipe
from denoisekit.errors import DenoisekitError
from denoisekit.plugins.metrics import _class_classifier as cc
from denoisekit.plugins.metrics.class_quality import (
    ClassQualityConfig,
    ClassQualityMetric,
    nearest_distances,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    recipe, registry = reference_recipe("digits")
    cache = tmp_path_factory.mktemp("cache")
    train = registry.build("data", "digits", None, train=True)
    test = registry.build("data", "digits", None, train=False)
    return recipe, registry, cache, train, test


def score(setup, images, labels=None, **options):
    options.setdefault("steps", 600)  # enough for the 8×8 digits
    recipe, registry, cache, *_ = setup
    context = EvalContext(
        recipe=recipe,
        registry=registry,
        cache_dir=cache,
        sample_set=SampleSet(images=images, labels=labels),
    )
    return ClassQualityMetric(ClassQualityConfig(**options))(context)


def test_classifier_is_cached_with_its_accuracy(setup) -> None:
    *_, cache, _, test = setup
    first = score(setup, test.images[:50])
    files = list((cache / "class-classifier").glob("digits-heldout-*.safetensors"))
    assert len(files) == 1
    assert 0.9 < first["classifier_accuracy"] <= 1.0
    cc._LOADED.clear()  # read back from the file: the same weights, the same accuracy
    again = score(setup, test.images[:50])
    assert again == first
    key = files[0].name.split("-v")[0]
    assert cc.cache_file(cache, key, cc.ClassifierRecipe(steps=600)) == files[0]
    assert cc.cache_file(cache, key, cc.ClassifierRecipe(steps=7)) != files[0]
    assert cc.cache_file(cache, "other", cc.ClassifierRecipe()) != files[0]


def test_held_out_subset_is_near_the_floor_and_degraded_images_far_from_it(setup) -> None:
    *_, test = setup
    floor = score(setup, test.images[:180])
    other_half = score(setup, test.images[180:])
    assert other_half["class_fd"] == pytest.approx(floor["class_fd"], rel=0.3)
    blurred = F.avg_pool2d(F.pad(test.images[:180], (1, 1, 1, 1), mode="replicate"), 3, 1)
    noised = (
        test.images[:180]
        + 0.5 * torch.randn(180, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ).clamp(-1, 1)
    for bad in (blurred, noised):
        out = score(setup, bad)
        assert out["class_fd"] > 4 * floor["class_fd"]
    assert floor["class_coverage"] == 1.0 and floor["class_tv"] < 0.15


def test_class_histogram_coverage_and_accuracy(setup) -> None:
    *_, test = setup
    sevens = test.images[test.labels == 7]
    out = score(setup, sevens)
    assert out["class_count/7"] > 0.9 * len(sevens)
    assert out["class_coverage"] == pytest.approx(0.1) and out["class_tv"] > 0.8
    assert "class_accuracy" not in out
    labelled = score(setup, test.images, test.labels)
    assert labelled["class_accuracy"] > 0.9
    assert sum(labelled[f"class_count/{c}"] for c in range(10)) == len(test.labels)
    per_class = torch.tensor([labelled[f"class_accuracy/{c}"] for c in range(10)])
    counts = torch.bincount(test.labels, minlength=10).double()
    # the overall accuracy is the per-class accuracies weighted by the class counts
    assert labelled["class_accuracy"] == pytest.approx(float((per_class * counts).sum() / 360))
    wrong = score(setup, test.images, (test.labels + 1) % 10)
    assert wrong["class_accuracy"] < 0.1


def test_memorisation_flags_a_copy_of_the_training_set(setup) -> None:
    *_, train, test = setup
    copied = score(setup, train.images[:200])
    assert copied["memorised"] == 1.0 and copied["nn_ratio"] == 0.0
    held_out = score(setup, test.images[:200])  # the real-data floor: no copies
    assert held_out["memorised"] < 0.05 and 0.5 < held_out["nn_ratio"] < 1.0
    g = torch.Generator().manual_seed(1)
    noisy_copy = (train.images[:200] + 0.1 * torch.randn(200, 1, 8, 8, generator=g)).clamp(-1, 1)
    assert score(setup, noisy_copy)["memorised"] > 0.9
    # a blend of two training images of different classes is no copy
    a, b = train.images[:200], train.images[200:400]
    keep = train.labels[:200] != train.labels[200:400]
    assert score(setup, 0.5 * (a[keep] + b[keep]))["memorised"] < 0.2


def test_nearest_distances_against_cdist() -> None:
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(37, 1, 4, 4, generator=g), torch.randn(53, 1, 4, 4, generator=g)
    want = torch.cdist(q.reshape(37, -1).double(), bank.reshape(53, -1).double()).min(1).values
    torch.testing.assert_close(nearest_distances(q, bank, chunk=8), want.float())
    assert float(nearest_distances(bank[:5], bank).max()) < 1e-5
    others = torch.cdist(bank[:5].reshape(5, -1), bank.reshape(53, -1)) + 1e9 * torch.eye(5, 53)
    torch.testing.assert_close(
        nearest_distances(bank[:5], bank, skip_copies=True), others.min(1).values
    )


def test_unlabelled_data_and_no_recipe_are_one_line_errors(setup) -> None:
    *_, test = setup
    context = EvalContext(sample_set=SampleSet(images=test.images[:10], labels=None))
    with pytest.raises(DenoisekitError, match="class-quality needs the recipe"):
        ClassQualityMetric(ClassQualityConfig())(context)
    with pytest.raises(ValueError, match="memorisation_ratio"):
        ClassQualityConfig(memorisation_ratio=0.0)
