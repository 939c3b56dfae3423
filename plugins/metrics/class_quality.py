"""Sample quality on any labelled data, with nothing downloaded (``[metrics.class-quality]``).

A small CNN classifier is trained on the reference data's training split (the recipe's
data with ``train=True``, flips off) and cached (see
``denoisekit.plugins.metrics._class_classifier``: keyed by the data and the classifier's
hyper-parameters, its held-out accuracy recorded). Against the held-out split (the
recipe's data with ``train=False``) it reports:

* ``class_fd``: the Fréchet distance between the classifier's 128-d penultimate features of
  the samples and of the held-out images (the math of ``[metrics.fd]``);
* ``class_count/<c>``: samples predicted as class ``c`` (the class histogram);
  ``class_coverage``: the fraction of classes predicted for at least half their share of
  the held-out split (1: no class missing); ``class_tv``: the total-variation distance
  between the predicted-class shares of the samples and of the held-out images (0 = same);
* for samples drawn for chosen classes (``arr_1`` labels): ``class_accuracy``, the fraction
  predicted as their label, and ``class_accuracy/<c>`` per class;
* ``memorised``: the fraction of samples whose nearest training image is closer than
  ``memorisation_ratio`` times their nearest held-out image (Euclidean distance in pixel
  space, 8-bit images; a held-out image identical to the sample is skipped, so held-out
  images themselves can be scored: the real-data floor). A model that generalises draws
  images about as far from the training images as from unseen ones (the ratio is near 1,
  somewhat below it when the training split is the larger); a copied training image has
  ratio 0. ``nn_ratio``: the median of that ratio over the samples;
* ``classifier_accuracy``: the classifier's accuracy on the held-out split, to read the
  numbers by.

Scale: score a held-out subset of the same size as the samples (the real-data floor;
docs/quality.md lists it for Fashion-MNIST). FD is biased upwards for small sets: compare
numbers of the same sample count only.

Recipe example::

    [metrics.class-quality]
    memorisation_ratio = 0.5
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import int_at_least, open_unit_interval, option
from denoisekit.contracts import MetricContext
from denoisekit.errors import DenoisekitError
from denoisekit.images import quantize


@attrs.frozen(kw_only=True)
class ClassQualityConfig:
    """Options of ``[metrics.class-quality]``."""

    memorisation_ratio: float = option(
        0.5,
        "a sample is memorised when its nearest training image is closer than this times "
        "its nearest held-out image",
        validator=open_unit_interval,
    )
    num_reference: int | None = option(
        None,
        "held-out images for the FD statistics and the class shares; None = all",
        validator=int_at_least(2, optional=True),
    )
    steps: int = option(
        1500, "classifier training steps (batches of 128)", validator=int_at_least(1)
    )
    seed: int = option(0, "classifier training seed")


def nearest_distances(
    queries: torch.Tensor, bank: torch.Tensor, *, skip_copies: bool = False, chunk: int = 256
) -> torch.Tensor:
    """The Euclidean distance of each query (flattened) to its nearest image in ``bank``.

    Computed as ``sqrt(min_j ||q||² + ||b_j||² - 2 q·b_j)`` in float64 matrix products,
    ``chunk`` queries at a time (bounded memory). ``skip_copies``: images of ``bank``
    identical to the query (squared distance below 1e-6) do not count.
    """
    q = queries.reshape(len(queries), -1).double()
    b = bank.reshape(len(bank), -1).double()
    b_sq = (b * b).sum(dim=1)
    out = []
    for start in range(0, len(q), chunk):
        part = q[start : start + chunk]
        d2 = (part * part).sum(dim=1, keepdim=True) + b_sq - 2.0 * part @ b.T
        if skip_copies:
            d2 = d2.masked_fill_(d2 < 1e-6, float("inf"))
        out.append(d2.min(dim=1).values.clamp_(min=0.0).sqrt_())
    return torch.cat(out).float()


class ClassQualityMetric:
    """The ``class-quality`` metric; see the module docstring."""

    name = "class-quality"

    def __init__(self, config: ClassQualityConfig) -> None:
        self.config = config
        self._training_images: tuple[str, torch.Tensor] | None = None  # (data key, images)

    def _training_data(self, context: MetricContext) -> Any:
        recipe = context.recipe
        config = recipe.data.config
        if attrs.has(type(config)) and "hflip" in attrs.fields_dict(type(config)):
            config = attrs.evolve(config, hflip=0.0)  # the images themselves
        return context.registry.build(
            "data", recipe.data.type, config, root=recipe.root, train=True
        )

    def classifier(self, context: MetricContext) -> Any:
        """The cached classifier of the context's reference data."""
        from denoisekit.plugins.metrics import _class_classifier as cc

        if context.recipe is None or context.registry is None:
            raise DenoisekitError(
                "class-quality needs the recipe of labelled data (its training split trains "
                "the classifier): evaluate a run, or pass --reference RECIPE"
            )
        num_classes = getattr(context.reference_data(), "num_classes", None)
        if not num_classes:
            raise DenoisekitError(
                f"class-quality needs labelled data; data type {context.recipe.data.type!r} "
                "has no classes"
            )
        recipe = cc.ClassifierRecipe(steps=self.config.steps, seed=self.config.seed)
        path = cc.cache_file(context.cache_dir, context.reference_key(), recipe)
        return cc.load_or_train(
            path,
            lambda: cc.dataset_tensors(self._training_data(context)),
            lambda: context.reference_images(),
            int(num_classes),
            recipe,
        )

    def __call__(self, context: MetricContext) -> dict[str, float]:
        from denoisekit.plugins.metrics import _class_classifier as cc
        from denoisekit.plugins.metrics.fd import feature_statistics, frechet_distance

        samples = context.samples()
        images = quantize(samples.images)
        model = self.classifier(context)
        reference, _ = context.reference_images(self.config.num_reference)
        if reference.shape[1:] != images.shape[1:]:
            raise DenoisekitError(
                f"class-quality: samples of shape {tuple(images.shape[1:])} against held-out "
                f"images of shape {tuple(reference.shape[1:])}: not comparable"
            )
        probs, feats = cc.classify(model, images)
        ref_probs, ref_feats = cc.classify(model, quantize(reference))
        k = probs.shape[1]
        out = {
            "class_fd": frechet_distance(
                *feature_statistics(feats), *feature_statistics(ref_feats)
            ),
            "classifier_accuracy": model.test_accuracy,
        }
        predicted = probs.argmax(dim=1)
        share = torch.bincount(predicted, minlength=k).double() / len(predicted)
        ref_share = torch.bincount(ref_probs.argmax(dim=1), minlength=k).double() / len(ref_probs)
        out["class_coverage"] = float((share >= ref_share / 2).double().mean())
        out["class_tv"] = float(0.5 * (share - ref_share).abs().sum())
        counts = torch.bincount(predicted, minlength=k)
        out.update({f"class_count/{c}": float(counts[c]) for c in range(k)})
        if samples.labels is not None:
            labels = samples.labels.cpu().long()
            right = predicted == labels
            out["class_accuracy"] = float(right.double().mean())
            for c in labels.unique().tolist():
                out[f"class_accuracy/{c}"] = float(right[labels == c].double().mean())
        out.update(self.memorisation(context, images))
        return out

    def memorisation(self, context: MetricContext, images: torch.Tensor) -> dict[str, float]:
        """``memorised`` and ``nn_ratio`` of 8-bit ``images`` (see the module docstring)."""
        training = self._training_images
        if training is None or training[0] != context.reference_key():
            from denoisekit.plugins.metrics._class_classifier import dataset_tensors

            bank = quantize(dataset_tensors(self._training_data(context))[0])
            training = self._training_images = (context.reference_key(), bank)
        held_out = quantize(context.reference_images()[0])
        d_train = nearest_distances(images, training[1])
        d_held_out = nearest_distances(images, held_out, skip_copies=True)
        ratio = d_train / d_held_out
        memorised = d_train < self.config.memorisation_ratio * d_held_out
        return {
            "memorised": float(memorised.double().mean()),
            "nn_ratio": float(ratio.median()),
        }


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``class-quality``."""
    return [
        ComponentSpec(
            kind="metric",
            name="class-quality",
            config=ClassQualityConfig,
            build=ClassQualityMetric,
            summary="FD in a classifier's features, class coverage and accuracy, memorisation; "
            "any labelled data, nothing downloaded.",
        )
    ]
