"""Fréchet distance between feature statistics of samples and of reference data (``[metrics.fd]``).

FD = ||mu_s - mu_r||² + tr(S_s + S_r - 2 (S_s S_r)^{1/2})  (Heusel et al. 2017, eq. 6; Dowson
& Landau 1982), with ``(mu, S)`` the mean and covariance (unbiased, ``N - 1``) of the
features of the samples (``s``) and of the reference data (``r``: the recipe's data built
with ``train=False``, its held-out split). With Inception-v3 pool features it is the FID.

Feature extractors (``features``):

* ``inception``: 2048-d Inception-v3 pool features from a weights file already on disk
  (pytorch-fid's FID weights give the standard FID; nothing is downloaded: the error
  says where to put the file);
* ``digits``: the 64-d penultimate layer of a small CNN the project trains on the digits
  training split and caches (see ``denoisekit.plugins.metrics._digits_classifier``);
* ``auto`` (default): ``digits`` for ``type = "digits"`` data, else ``inception``.

Both sets go through 8-bit quantization first (samples as ``denoisekit sample`` saves them,
the reference as a PNG would store it), so scoring a run and scoring its sample file give
the same number. The reference statistics are cached per dataset and extractor in
``<cache>/fd-reference/``, keyed by the data component's type, options and folder (not
its files' contents: delete the folder after changing a dataset in place). FD is biased
upwards for small sets: compare numbers computed with the same ``num_samples`` and
reference set only.

The trace of the square root is computed without complex arithmetic, in float64:
``tr (S_s S_r)^{1/2} = sum_i sqrt(lambda_i)`` with ``lambda_i`` the eigenvalues of the
symmetric positive semi-definite ``S_s^{1/2} S_r S_s^{1/2}`` (similar to ``S_s S_r``).

Recipe example::

    [metrics.fd]
    features = "digits"
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import int_at_least, option
from denoisekit.contracts import MetricContext
from denoisekit.errors import DenoisekitError
from denoisekit.images import quantize

log = logging.getLogger(__name__)

FEATURES = ("auto", "inception", "digits")


@attrs.frozen(kw_only=True)
class FDConfig:
    """Options of ``[metrics.fd]``."""

    features: str = option(
        "auto",
        "feature extractor: inception (standard FID), digits (the project's digits "
        "classifier), auto (digits for digits data, else inception)",
        validator=attrs.validators.in_(FEATURES),
    )
    inception_weights: str | None = option(
        None,
        "Inception-v3 weights file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth or "
        "torchvision's inception_v3_google-0cc3c7bd.pth); unset: looked for in the cache "
        "folder, then torch hub's checkpoints folder",
    )
    num_reference: int | None = option(
        None,
        "reference (held-out) images for the reference statistics; None = all",
        validator=int_at_least(2, optional=True),
    )
    batch_size: int = option(
        100,
        "images per feature-extractor batch",
        validator=int_at_least(1),
    )


# --------------------------------------------------------------------------- the math


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of ``(N, D)`` features, ``N >= 2``."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise DenoisekitError(f"FD needs at least 2 images' features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """``||mu1 - mu2||² + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})`` in float64.

    ``tr (S1 S2)^{1/2}`` is the sum of the square roots of the eigenvalues of
    ``S1^{1/2} S2 S1^{1/2}`` (symmetric PSD, similar to ``S1 S2``).
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}"
        )
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


# --------------------------------------------------------------------------- extractors


class DigitsFeatures:
    """The digits classifier's penultimate layer (64-d), on the CPU."""

    def __init__(self, model: Any, size: int = 8) -> None:
        from denoisekit.plugins.metrics._digits_classifier import VERSION

        self.model = model
        self.key = f"digits-classifier-v{VERSION}-size{size}"

    def __call__(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        from denoisekit.plugins.metrics._digits_classifier import classify

        return classify(self.model, images, batch_size=batch_size)[1]


def resolve_features(features: str, context: MetricContext) -> str:
    """``auto`` → ``digits`` for digits data, else ``inception``."""
    if features != "auto":
        return features
    data_type = getattr(getattr(context.recipe, "data", None), "type", None)
    return "digits" if data_type == "digits" else "inception"


def build_extractor(config: FDConfig, context: MetricContext) -> Any:
    """The feature extractor the config names (``key`` attribute, called on images)."""
    kind = resolve_features(config.features, context)
    if kind == "digits":
        from denoisekit.plugins.metrics._digits_classifier import classifier_for

        size = int(context.sample_images().shape[-1])
        return DigitsFeatures(classifier_for(context, size), size)
    from denoisekit.plugins.metrics._inception import find_weights, load_inception

    return load_inception(find_weights(config.inception_weights, context.cache_dir), context.device)


# --------------------------------------------------------------------------- the metric


def _save_statistics(path: Path, stats: tuple[np.ndarray, np.ndarray]) -> None:
    """Write ``mu`` and ``sigma`` to a temporary file beside ``path``, then rename it into
    place (a reader never sees a torn file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, mu=stats[0], sigma=stats[1])
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class FDMetric:
    """The ``fd`` metric: ``{"fd": Fréchet distance of samples to the reference data}``."""

    name = "fd"

    def __init__(self, config: FDConfig) -> None:
        self.config = config
        self._memo: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def stats_file(self, context: MetricContext, extractor: Any) -> Path | None:
        """Where the reference statistics are cached (None: a dataset given in code)."""
        if context.recipe is None:
            return None
        n = self.config.num_reference
        subset = "all" if n is None else f"n{n}-seed{context.seed}"  # the seeded subset
        name = f"{context.reference_key()}-{extractor.key}-{subset}.npz"
        return context.cache_dir / "fd-reference" / name

    def reference_statistics(
        self, context: MetricContext, extractor: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, sigma)`` of the reference features: memo, then cache file, then computed."""
        path = self.stats_file(context, extractor)
        key = str(path) if path is not None else f"{id(context.reference_data())}-{extractor.key}"
        if key in self._memo:
            return self._memo[key]
        stats = None
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    stats = (data["mu"], data["sigma"])
            except Exception as exc:  # a torn or foreign file: recompute
                log.warning("recomputing %s: %s", path, exc)
        if stats is None:
            images, _ = context.reference_images(self.config.num_reference)
            stats = feature_statistics(extractor(quantize(images), self.config.batch_size))
            if path is not None:
                _save_statistics(path, stats)
        self._memo[key] = stats
        return stats

    def __call__(self, context: MetricContext) -> dict[str, float]:
        extractor = build_extractor(self.config, context)
        samples = quantize(context.sample_images())
        reference = context.reference_data()
        ref_shape = tuple(getattr(reference, "image_shape", samples.shape[1:]))
        if ref_shape[0] != samples.shape[1]:
            raise DenoisekitError(
                f"the samples have {samples.shape[1]} channels, the reference data "
                f"{ref_shape[0]}: they are not comparable"
            )
        mu_s, sigma_s = feature_statistics(extractor(samples, self.config.batch_size))
        mu_r, sigma_r = self.reference_statistics(context, extractor)
        return {"fd": frechet_distance(mu_s, sigma_s, mu_r, sigma_r)}


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``fd``."""
    return [
        ComponentSpec(
            kind="metric",
            name="fd",
            config=FDConfig,
            build=FDMetric,
            summary="Fréchet distance of sample features to held-out data (Inception: FID; "
            "or the digits classifier).",
        )
    ]
