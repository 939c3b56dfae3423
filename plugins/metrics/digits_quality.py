"""How digit-like samples are, by the project's digits classifier (``[metrics.digits-quality]``).

Classifies the shared samples with the digits classifier (a small CNN trained on the digits
training split with an extra "not a digit" class; see
``denoisekit.plugins.metrics._digits_classifier``) and reports:

* ``digits_confident``: the fraction of samples whose most probable digit has probability
  above ``threshold`` (noise, blobs and blends of two digits fall below it);
* ``digits_classes``: how many of the ten digits occur among the confident samples (10: no
  mode is missing);
* ``digits_count/<d>``: confident samples of each digit ``d``;
* for samples drawn for chosen classes (``arr_1`` labels): ``digits_label_accuracy``, the
  fraction classified confidently as their label; ``digits_accuracy``, the fraction whose
  most probable digit is their label; ``digits_accuracy/<d>``, that fraction per class.

The quickstart check: ``digits_confident >= 0.9`` and ``digits_classes == 10``. For scale,
at version 1 of the classifier about 93% of the held-out test digits and ~100% of the
training digits are confident at the default threshold.

Recipe example::

    [metrics.digits-quality]
    threshold = 0.9
"""

from __future__ import annotations

import attrs
import torch

from denoisekit import ComponentSpec, hookimpl
from denoisekit.config import open_unit_interval, option
from denoisekit.contracts import MetricContext
from denoisekit.errors import DenoisekitError
from denoisekit.images import quantize


@attrs.frozen(kw_only=True)
class DigitsQualityConfig:
    """Options of ``[metrics.digits-quality]``."""

    threshold: float = option(
        0.9,
        "a sample is confident when its top digit probability exceeds this",
        validator=open_unit_interval,
    )


class DigitsQualityMetric:
    """The ``digits-quality`` metric; see the module docstring."""

    name = "digits-quality"

    def __init__(self, config: DigitsQualityConfig) -> None:
        self.config = config

    def __call__(self, context: MetricContext) -> dict[str, float]:
        from denoisekit.plugins.metrics._digits_classifier import (
            NUM_CLASSES,
            classifier_for,
            classify,
        )

        samples = context.samples()
        images = samples.images
        if images.shape[1] != 1:
            raise DenoisekitError(
                f"digits-quality needs 1-channel digit images, got {images.shape[1]} channels"
            )
        probs, _ = classify(classifier_for(context, images.shape[-1]), quantize(images))
        top, digit = probs[:, :NUM_CLASSES].max(dim=1)
        confident = top > self.config.threshold
        counts = torch.bincount(digit[confident], minlength=NUM_CLASSES)
        out = {
            "digits_confident": float(confident.float().mean()),
            "digits_classes": float(int((counts > 0).sum())),
        }
        out.update({f"digits_count/{d}": float(counts[d]) for d in range(NUM_CLASSES)})
        if samples.labels is not None:  # drawn for chosen classes: did they come out?
            labels = samples.labels.cpu().long()
            right = digit == labels
            out["digits_label_accuracy"] = float((confident & right).float().mean())
            out["digits_accuracy"] = float(right.float().mean())
            for d in labels.unique().tolist():
                if 0 <= d < NUM_CLASSES:
                    out[f"digits_accuracy/{d}"] = float(right[labels == d].float().mean())
        return out


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``digits-quality``."""
    return [
        ComponentSpec(
            kind="metric",
            name="digits-quality",
            config=DigitsQualityConfig,
            build=DigitsQualityMetric,
            summary="fraction of samples the digits classifier is confident about, and the "
            "digits present (the quickstart check).",
        )
    ]
