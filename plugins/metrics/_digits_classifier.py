"""A small CNN classifier of the 8×8 digits: the feature extractor of ``fd`` (features =
"digits") and the judge of ``digits-quality``.

Trained once on the digits *training* split (1,437 images, the ``digits`` data plugin's
split) with a fixed seed, in a few seconds on a CPU, and cached in the denoisekit cache
folder as safetensors (written to a temporary file, then renamed into place). The held-out
test split (360 images), which the metrics use as reference data, is never seen.

Training adds *outlier exposure* (Hendrycks et al. 2019, "Deep Anomaly Detection with
Outlier Exposure") through an eleventh, "not a digit" class: uniform noise, clipped
Gaussian noise (the saturated speckle an untrained sampler draws), smooth random blobs and
50/50 blends of two digits of different classes are trained towards it, so such images are
not given a confident digit class, which is what ``digits-quality`` counts. Measured at
version 1: 98% test accuracy; a top digit probability > 0.9 for 93% of the held-out test
digits and ~100% of the training digits, for none of noise, blobs, blurred digits or an
untrained model's samples.

Inputs of another size are resized to 8×8 (block averages), and each size has its own
classifier, trained on the training split at that size, so runs on ``image_size = 16``
digits work too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

import denoisekit
from denoisekit.contracts import MetricContext
from denoisekit.errors import DenoisekitError
from denoisekit.files import write_bytes
from denoisekit.plugins.metrics._class_classifier import classify as classify_batches

log = logging.getLogger(__name__)

#: Bump when the architecture or the training recipe changes (a new cache file).
VERSION = 1
#: Side of the images the classifier works at.
SIZE = 8
NUM_CLASSES = 10
#: Width of the penultimate layer: the FD features.
FEATURE_DIM = 64

# In-process memo: cache file path -> classifier (a cache, not state: same file, same net).
_LOADED: dict[str, DigitsClassifier] = {}


class DigitsClassifier(nn.Module):
    """conv-conv-pool-fc(64)-fc(11) on 1×8×8 images in [-1, 1].

    :meth:`features` gives the 64-d penultimate activations (the FD features); calling the
    module gives the logits of the ten digits and, last, of "not a digit".
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4×4
            nn.Flatten(),
            nn.Linear(32 * 16, FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES + 1)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` images in [-1, 1] → the 8×8 float input."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise DenoisekitError(
                f"the digits classifier takes 1-channel images, got shape {tuple(images.shape)}; "
                "use metrics.fd.features = 'inception' for other data"
            )
        x = images.float()
        if x.shape[-2:] != (SIZE, SIZE):
            h, w = x.shape[-2:]
            exact = h % SIZE == 0 and w % SIZE == 0  # block averages for whole factors
            mode = "area" if exact else "bilinear"
            x = F.interpolate(x, size=(SIZE, SIZE), mode=mode, antialias=not exact)
        return x

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate activations ``(B, 64)``."""
        return self.body(self.prepare(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The class logits ``(B, 11)`` (index 10: not a digit)."""
        return self.head(self.features(images))


def _outliers(x: torch.Tensor, y: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` non-digits, in equal parts: uniform noise, clipped Gaussian noise of random
    scale (saturated speckle, what an untrained sampler gives), smooth random blobs, and
    blends of two digits of different classes."""
    k = max(1, n // 4)
    shape = (k, 1, SIZE, SIZE)
    uniform = torch.rand(shape, generator=generator) * 2 - 1
    scale = torch.rand(k, 1, 1, 1, generator=generator) * 2.5 + 0.5
    clipped = (torch.randn(shape, generator=generator) * scale).clamp(-1, 1)
    coarse = torch.randn(k, 1, 3, 3, generator=generator) * 1.5
    blobs = F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    blobs = blobs.clamp(-1, 1)
    i = torch.randint(0, x.shape[0], (k,), generator=generator)
    j = torch.randint(0, x.shape[0], (k,), generator=generator)
    keep = y[i] != y[j]
    blends = 0.5 * (x[i[keep]] + x[j[keep]])
    return torch.cat([uniform, clipped, blobs, blends])


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int = 0,
    epochs: int = 40,
    batch_size: int = 64,
    lr: float = 3e-3,
    outlier_weight: float = 0.2,
) -> DigitsClassifier:
    """Train a :class:`DigitsClassifier` on ``images`` (N×1×8×8 in [-1, 1]) and labels.

    Deterministic for a seed; leaves torch's global random state untouched. Runs on one
    CPU thread: these tensors are far too small for intra-op parallelism, and on a busy
    machine spinning threads slow each step down many times.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(images, labels, seed, epochs, batch_size, lr, outlier_weight)
    finally:
        torch.set_num_threads(threads)


def _train(
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    outlier_weight: float,
) -> DigitsClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    generator = torch.Generator().manual_seed(seed)
    x_all = DigitsClassifier.prepare(images.cpu())
    y_all = labels.cpu().long()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (x_all.shape[0] + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch
    )
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x_all.shape[0], generator=generator)
        for start in range(0, x_all.shape[0], batch_size):
            idx = order[start : start + batch_size]
            x, y = x_all[idx], y_all[idx]
            # Outlier exposure with a reject class: non-digits are class 10.
            outliers = _outliers(x_all, y_all, max(4, len(idx) // 2), generator)
            logits = model(torch.cat([x, outliers]))
            reject = torch.full((outliers.shape[0],), NUM_CLASSES, dtype=torch.long)
            loss = F.cross_entropy(logits[: len(idx)], y) + outlier_weight * F.cross_entropy(
                logits[len(idx) :], reject
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    model.requires_grad_(False)
    return model


def cache_file(cache_dir: Path | str, size: int = SIZE, seed: int = 0) -> Path:
    """Where the classifier for ``size``×``size`` digits and ``seed`` is cached."""
    name = f"v{VERSION}-size{size}-seed{seed}.safetensors"
    return Path(cache_dir) / "digits-classifier" / name


def load_or_train(
    cache_dir: Path | str, training_data: Any, *, size: int = SIZE, seed: int = 0
) -> DigitsClassifier:
    """The cached classifier, trained (and cached) first when absent or unreadable.

    Args:
        cache_dir: the denoisekit cache folder.
        training_data: a zero-argument callable returning the digits training split at
            ``size`` (the data plugin's ``image_size``) as a dataset with ``images`` and
            ``labels`` tensors (only called to train).
        size: the side of the images to classify. Digits resized by the data plugin (to
            16, say) lose detail on the way back to 8×8, so each size has its own
            classifier, trained on the training split as the data plugin gives it at
            that size.
        seed: the training seed.
    """
    path = cache_file(cache_dir, size, seed)
    key = str(path.resolve())
    if key in _LOADED and path.is_file():
        return _LOADED[key]
    model = None
    if path.is_file():
        try:
            model = DigitsClassifier()
            model.load_state_dict(load_file(path))
            model.eval()
            model.requires_grad_(False)
        except (SafetensorError, OSError, RuntimeError) as exc:
            log.warning("retraining the digits classifier: %s is unreadable (%s)", path, exc)
            model = None
    if model is None:
        data = training_data()
        log.info("training the digits classifier on %d images (cached in %s)", len(data), path)
        model = train_classifier(data.images, data.labels, seed=seed)
        _save_weights(path, model)
    _LOADED[key] = model
    return model


def _save_weights(path: Path, model: nn.Module) -> None:
    """Write the weights as safetensors, atomically (a reader never sees a torn file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, safetensors_bytes(model.state_dict(), metadata={"version": str(VERSION)}))


def classifier_for(context: MetricContext, size: int = SIZE) -> DigitsClassifier:
    """The cached classifier for ``size``×``size`` digits of an evaluation context.

    Trains it when absent from ``context.cache_dir``, on the training split of the
    ``digits`` data component (from ``context.registry``, else the installed plugins'
    through :func:`denoisekit.build`) at ``image_size = size``.
    """

    def training_data() -> Any:
        registry = context.registry
        return denoisekit.build(
            "data", "digits", registry=registry, image_size=size, root=Path.cwd(), train=True
        )

    return load_or_train(context.cache_dir, training_data, size=int(size))


def classify(
    model: DigitsClassifier, images: torch.Tensor, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``(N, 11)`` and features ``(N, 64)`` of [-1, 1] images (CPU).

    Column 10 is the probability of "not a digit".
    """
    return classify_batches(model, images, batch_size)
