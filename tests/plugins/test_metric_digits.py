"""The digits classifier (FD features, ``digits-quality``) and the ``digits-quality`` metric.

The classifier is trained once per test session into a temporary cache folder
(:func:`shared_cache_dir`, also used by the FD and evaluation tests).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from denoisekit.engine.evaluation import EvalContext, SampleSet
from denoisekit.host.plugin_manager import get_plugin_manager
from denoisekit.host.registry import Registry
from denoisekit.plugins.metrics import _digits_classifier as dc
from denoisekit.plugins.metrics.digits_quality import DigitsQualityConfig, DigitsQualityMetric


@functools.cache
def digits_registry() -> Registry:
    """Only the digits data: what the classifier needs."""
    return Registry.from_plugin_manager(
        get_plugin_manager(
            plugins=["denoisekit.plugins.data.digits"], builtins=False, autoload=False
        )
    )


def digits(train: bool):
    return digits_registry().build("data", "digits", None, train=train)


@functools.cache
def shared_cache_dir() -> Path:
    """A cache folder holding the trained classifier, made once per test session."""
    path = Path(tempfile.mkdtemp(prefix="denoisekit-test-cache-"))
    atexit.register(shutil.rmtree, path, True)
    dc.load_or_train(path, lambda: digits(True))
    return path


@pytest.fixture(scope="module")
def classifier() -> dc.DigitsClassifier:
    return dc.load_or_train(shared_cache_dir(), lambda: digits(True))


def test_classifier_is_accurate_on_the_held_out_split(classifier) -> None:
    test = digits(False)
    probs, feats = dc.classify(classifier, test.images)
    assert probs.shape == (360, 11) and feats.shape == (360, dc.FEATURE_DIM)
    accuracy = float((probs.argmax(dim=1) == test.labels).float().mean())
    assert accuracy > 0.95
    confident = float((probs[:, :10].max(dim=1).values > 0.9).float().mean())
    assert confident > 0.85


def test_classifier_is_not_confident_on_non_digits(classifier) -> None:
    g = torch.Generator().manual_seed(123)
    noise = torch.rand(200, 1, 8, 8, generator=g) * 2 - 1
    speckle = (torch.randn(200, 1, 8, 8, generator=g) * 1.5).clamp(-1, 1)
    blank = -torch.ones(20, 1, 8, 8)
    for images in (noise, speckle, blank):
        probs, _ = dc.classify(classifier, images)
        assert float((probs[:, :10].max(dim=1).values > 0.9).float().mean()) < 0.05


@pytest.mark.slow
def test_classifier_for_16px_digits(tmp_path) -> None:
    """Runs on image_size = 16 digits get a classifier trained at that size."""

    class Context:
        cache_dir = tmp_path
        registry = digits_registry()

    model = dc.classifier_for(Context(), 16)
    assert dc.cache_file(tmp_path, 16).is_file()
    registry = digits_registry()
    config = registry.get("data", "digits").spec.config(image_size=16)
    test16 = registry.build("data", "digits", config, train=False)
    probs, _ = dc.classify(model, test16.images)
    assert float((probs.argmax(dim=1) == test16.labels).float().mean()) > 0.95


def test_cache_file_is_reloaded_without_training(tmp_path) -> None:
    source = dc.cache_file(shared_cache_dir())
    target = dc.cache_file(tmp_path)
    target.parent.mkdir(parents=True)
    shutil.copy(source, target)

    def no_training():
        raise AssertionError("trained although the cache file exists")

    model = dc.load_or_train(tmp_path, no_training)
    reference = dc.load_or_train(shared_cache_dir(), no_training)
    x = digits(False).images[:10]
    assert torch.equal(model(x), reference(x))


def test_unreadable_cache_file_is_retrained(tmp_path, monkeypatch) -> None:
    path = dc.cache_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    calls = []

    def fake_train(images, labels, **kwargs):
        calls.append(len(images))
        return dc.DigitsClassifier().eval()

    monkeypatch.setattr(dc, "train_classifier", fake_train)
    dc.load_or_train(tmp_path, lambda: digits(True))
    assert calls == [1437]
    assert path.stat().st_size > 1000  # rewritten, loads with weights_only
    torch.load(path, weights_only=True)


def test_training_is_deterministic_and_leaves_global_rng_alone() -> None:
    data = digits(True)
    images, labels = data.images[:128], data.labels[:128]
    state = torch.get_rng_state()
    a = dc.train_classifier(images, labels, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)
    b = dc.train_classifier(images, labels, epochs=1)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_prepare_rejects_colour_images() -> None:
    from denoisekit.errors import DenoisekitError

    with pytest.raises(DenoisekitError, match="1-channel"):
        dc.DigitsClassifier.prepare(torch.zeros(2, 3, 8, 8))


# --------------------------------------------------------------------------- digits-quality


def quality(images: torch.Tensor, labels: torch.Tensor | None = None, **config) -> dict:
    metric = DigitsQualityMetric(DigitsQualityConfig(**config))
    context = EvalContext(
        sample_set=SampleSet(images=images, labels=labels),
        cache_dir=shared_cache_dir(),
        registry=digits_registry(),
    )
    return metric(context)


def test_digits_quality_of_real_digits() -> None:
    test = digits(False)
    out = quality(test.images, test.labels)
    assert out["digits_confident"] > 0.85
    assert out["digits_classes"] == 10
    counts = [out[f"digits_count/{d}"] for d in range(10)]
    assert sum(counts) == pytest.approx(out["digits_confident"] * 360)
    assert min(counts) > 20  # the test split holds ~36 of each digit
    assert out["digits_label_accuracy"] > 0.85
    assert out["digits_accuracy"] >= out["digits_label_accuracy"]
    per_class = [out[f"digits_accuracy/{d}"] for d in range(10)]
    counts = torch.bincount(test.labels.long(), minlength=10).float()
    # the overall accuracy is the per-class accuracies weighted by the class counts
    assert out["digits_accuracy"] == pytest.approx(
        float((torch.tensor(per_class) * counts).sum() / 360)
    )
    assert min(per_class) > 0.8


def test_digits_quality_of_one_digit_and_of_noise() -> None:
    test = digits(False)
    sevens = test.images[test.labels == 7]
    out = quality(sevens)
    assert out["digits_classes"] == 1 and out["digits_count/7"] > 0
    assert "digits_label_accuracy" not in out
    noise = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = quality(noise)
    assert out["digits_confident"] < 0.05 and out["digits_classes"] <= 1


def test_digits_quality_threshold_and_validation() -> None:
    test = digits(False)
    loose = quality(test.images, threshold=0.5)["digits_confident"]
    strict = quality(test.images, threshold=0.99)["digits_confident"]
    assert loose > strict
    with pytest.raises(ValueError, match="'threshold' must be in"):
        DigitsQualityConfig(threshold=1.0)
