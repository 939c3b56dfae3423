"""The ``fd`` metric: the Fréchet distance against closed forms, features, caching, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from denoisekit.engine.evaluation import EvalContext, SampleSet
from denoisekit.errors import DenoisekitError
from denoisekit.host.recipe import recipe_from_data
from denoisekit.images import quantize
from denoisekit.plugins.metrics import _inception
from denoisekit.plugins.metrics.fd import (
    FDConfig,
    FDMetric,
    feature_statistics,
    frechet_distance,
)
from tests.plugins.test_metric_digits import digits, digits_registry, shared_cache_dir


def random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_identical_statistics_give_zero() -> None:
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(16), random_spd(16, rng)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    feats = rng.standard_normal((200, 8))
    assert frechet_distance(*feature_statistics(feats), *feature_statistics(feats)) == (
        pytest.approx(0.0, abs=1e-9)
    )


def test_diagonal_covariances_match_the_closed_form() -> None:
    """Commuting (diagonal) covariances: (S1 S2)^{1/2} is elementwise sqrt(s1 s2)."""
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    s1, s2 = rng.uniform(0.1, 3, 10), rng.uniform(0.1, 3, 10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)
    # one dimension: (mu1 - mu2)^2 + (sigma1 - sigma2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_non_commuting_covariances_match_scipy_sqrtm() -> None:
    rng = np.random.default_rng(2)
    d = 12
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_spd(d, rng), random_spd(d, rng)
    assert not np.allclose(s1 @ s2, s2 @ s1)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_singular_covariances_are_handled() -> None:
    """Fewer samples than dimensions (rank-deficient covariances) stay finite and >= 0."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 20)), rng.standard_normal((5, 20)) + 1
    value = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert np.isfinite(value) and value > 0


def test_feature_statistics_and_errors() -> None:
    feats = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    mu, sigma = feature_statistics(feats)
    assert mu == pytest.approx([2.0, 4.0])
    assert sigma == pytest.approx(np.cov(feats.T))
    with pytest.raises(DenoisekitError, match="at least 2"):
        feature_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# --------------------------------------------------------------------------- the metric


def digits_recipe():
    # A data-only reference recipe, as `eval --samples --reference digits` builds one: the
    # cross-table checks (data vs backbone) do not apply to it.
    data = {"name": "ref", "data": {"type": "digits"}}
    return recipe_from_data(data, full_registry(), check=False)


def full_registry():
    from denoisekit.host.plugin_manager import get_plugin_manager
    from denoisekit.host.registry import Registry

    return Registry.from_plugin_manager(
        get_plugin_manager(
            plugins=[
                "denoisekit.plugins.data.digits",
                "denoisekit.plugins.metrics.fd",
                "denoisekit.plugins.metrics.nll",
                "denoisekit.plugins.metrics.digits_quality",
                "denoisekit.plugins.metrics.sample_time",
                "denoisekit.plugins.schedules.cosine",
                "denoisekit.plugins.backbones.unet",
                "denoisekit.plugins.losses.mse",
                "denoisekit.plugins.optim.adam",
                "denoisekit.plugins.optim.lr_constant",
                "denoisekit.plugins.samplers.ddim",
            ],
            builtins=False,
            autoload=False,
        )
    )


def fd_context(images: torch.Tensor, cache_dir, recipe=None) -> EvalContext:
    recipe = recipe if recipe is not None else digits_recipe()
    return EvalContext(
        sample_set=SampleSet(images=images),
        recipe=recipe,
        registry=digits_registry(),
        cache_dir=cache_dir,
    )


def with_classifier(tmp_path):
    """A fresh cache folder holding the session's trained classifier."""
    import shutil

    from denoisekit.plugins.metrics import _digits_classifier as dc

    target = dc.cache_file(tmp_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(dc.cache_file(shared_cache_dir()), target)
    return tmp_path


def test_fd_of_the_reference_set_itself_is_zero(tmp_path) -> None:
    cache = with_classifier(tmp_path)
    test = digits(False)
    metric = FDMetric(FDConfig(features="digits"))
    # float64 round-off only (the traces are ~1e2)
    assert metric(fd_context(test.images, cache))["fd"] == pytest.approx(0.0, abs=1e-4)


def test_fd_orders_sets_by_quality_and_caches_reference_stats(tmp_path) -> None:
    cache = with_classifier(tmp_path)
    train = digits(True)
    metric = FDMetric(FDConfig())  # auto: digits features for digits data
    real = metric(fd_context(train.images[:400], cache))["fd"]
    files = list((cache / "fd-reference").glob("*.npz"))
    assert len(files) == 1 and "digits-heldout-" in files[0].name
    g = torch.Generator().manual_seed(0)
    noisy = (train.images[:400] + 0.5 * torch.randn(400, 1, 8, 8, generator=g)).clamp(-1, 1)
    noise = torch.rand(400, 1, 8, 8, generator=g) * 2 - 1
    worse = FDMetric(FDConfig())(fd_context(noisy, cache))["fd"]  # a new metric: from file
    worst = metric(fd_context(noise, cache))["fd"]
    assert 0 < real < worse < worst
    # the cached statistics are what a recomputation gives
    with np.load(files[0]) as data:
        from denoisekit.plugins.metrics import _digits_classifier as dc

        model = dc.load_or_train(cache, None)
        reference = quantize(digits(False).images)  # 8-bit, as a PNG stores it
        mu, sigma = feature_statistics(dc.classify(model, reference)[1])
        assert data["mu"] == pytest.approx(mu, abs=1e-6)
        assert data["sigma"] == pytest.approx(sigma, abs=1e-6)


def test_missing_inception_weights_is_one_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    context = fd_context(digits(False).images[:10], tmp_path / "cache")
    with pytest.raises(DenoisekitError) as info:
        FDMetric(FDConfig(features="inception"))(context)
    message = str(info.value)
    assert "\n" not in message
    assert _inception.FID_WEIGHTS in message and _inception.TORCHVISION_WEIGHTS in message
    assert str(tmp_path / "cache") in message and "inception_weights" in message
    with pytest.raises(DenoisekitError, match="no such file"):
        FDMetric(FDConfig(features="inception", inception_weights=str(tmp_path / "x.pth")))(context)


def test_unreadable_inception_weights(tmp_path) -> None:
    bad = tmp_path / _inception.FID_WEIGHTS
    bad.write_bytes(b"garbage")
    with pytest.raises(DenoisekitError, match="not a readable Inception-v3 weights file"):
        _inception.load_inception(_inception.find_weights(None, tmp_path))
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(DenoisekitError, match=r"no fc\.weight"):
        _inception.InceptionFeatures(bad)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="features"):
        FDConfig(features="clip")
    with pytest.raises(ValueError, match="'num_reference' must be an integer >= 2"):
        FDConfig(num_reference=1)
    with pytest.raises(ValueError, match="'batch_size' must be a positive integer"):
        FDConfig(batch_size=0)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fid", "torchvision"])
def test_inception_weights_load_and_give_pool_features(tmp_path, variant) -> None:
    """A weights file of each variant (random weights, the real files' layout) loads and
    gives 2048-d features; the FID variant pools like TensorFlow."""
    net = _inception.build_inception(variant)
    torch.nn.init.normal_(net.fc.weight, std=0.01)
    name = _inception.FID_WEIGHTS if variant == "fid" else _inception.TORCHVISION_WEIGHTS
    torch.save(net.state_dict(), tmp_path / name)
    features = _inception.load_inception(_inception.find_weights(None, tmp_path))
    assert features.variant == variant
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    out = features(images)
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
    if variant == "fid":
        assert features.net.Mixed_7c.max_pool and not features.net.Mixed_7b.max_pool
