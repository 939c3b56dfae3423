"""A small CNN classifier of any labelled image data: the judge of ``class-quality``.

Trained on the reference data's *training* split (the recipe's data built with
``train=True``, flips off) with a fixed seed, and cached in the denoisekit cache folder as
safetensors, its held-out accuracy in the file's metadata. The cache file is named by the
data (:func:`denoisekit.engine.reference.reference_key`'s text: type, options, folder)
and by the classifier's own recipe (:class:`ClassifierRecipe`, with :data:`VERSION` for
the code), so another dataset, another image size or other hyper-parameters get their own.

The network: conv(16)-pool-conv(32)-pool-conv(64)-avgpool(4×4)-fc(128)-fc(K), ReLUs,
at the data's own size. The 128-d penultimate activations are the Fréchet-distance
features. Training runs on one CPU thread (these tensors are too small for intra-op
parallelism, and on a busy machine spinning threads slow each step down many times).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from denoisekit.files import write_bytes

log = logging.getLogger(__name__)

#: Bump when the network or the training code changes (a new cache file).
VERSION = 1
#: Width of the penultimate layer: the Fréchet-distance features.
FEATURE_DIM = 128

# In-process memo: cache file path -> classifier (same file, same net).
_LOADED: dict[str, Classifier] = {}


@attrs.frozen(kw_only=True)
class ClassifierRecipe:
    """The classifier's hyper-parameters (part of its cache key)."""

    steps: int = 1500
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        """A short hash of the hyper-parameters and :data:`VERSION`."""
        text = json.dumps({"version": VERSION, **attrs.asdict(self)}, sort_keys=True)
        return f"v{VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


class Classifier(nn.Module):
    """conv-pool-conv-pool-conv-avgpool-fc(128)-fc(K) on ``C×H×W`` images in [-1, 1].

    Attributes:
        test_accuracy: the held-out accuracy measured after training (NaN if unknown).
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(64 * 16, FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)
        self.test_accuracy = float("nan")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate activations ``(B, 128)``."""
        return self.body(images.float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The class logits ``(B, K)``."""
        return self.head(self.features(images))


@torch.no_grad()
def classify(
    model: nn.Module, images: torch.Tensor, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``(N, K)`` and penultimate features of [-1, 1] images (CPU),
    for any classifier with ``features`` and ``head`` (this one, the digits')."""
    probs, feats = [], []
    for start in range(0, images.shape[0], batch_size):
        f = model.features(images[start : start + batch_size].cpu())
        feats.append(f)
        probs.append(model.head(f).softmax(dim=1))
    return torch.cat(probs), torch.cat(feats)


def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of ``images`` classified as their ``labels``."""
    probs, _ = classify(model, images)
    return float((probs.argmax(dim=1) == labels.cpu()).float().mean())


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, recipe: ClassifierRecipe
) -> Classifier:
    """Train a :class:`Classifier` on ``images`` (N×C×H×W in [-1, 1]) and ``labels``.

    Deterministic for ``recipe.seed``; leaves torch's global random state and thread
    count as they were.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            model = Classifier(images.shape[1], num_classes)
            _train(model, images.cpu(), labels.cpu().long(), recipe)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.requires_grad_(False)
    return model


def _train(model: Classifier, x_all: torch.Tensor, y_all: torch.Tensor, r: ClassifierRecipe):
    generator = torch.Generator().manual_seed(r.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=r.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=r.lr, total_steps=r.steps)
    model.train()
    n = x_all.shape[0]
    batch = min(r.batch_size, n)
    step = 0
    while step < r.steps:  # epochs of a fresh permutation (whole batches), the last cut short
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch + 1, batch):
            if step == r.steps:
                break
            step += 1
            idx = order[start : start + batch]
            loss = F.cross_entropy(model(x_all[idx].float()), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()


def cache_file(cache_dir: Path | str, data_key: str, recipe: ClassifierRecipe) -> Path:
    """Where the classifier of the data named ``data_key`` is cached."""
    return Path(cache_dir) / "class-classifier" / f"{data_key}-{recipe.key()}.safetensors"


def load_or_train(
    path: Path,
    training_data: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    test_data: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    recipe: ClassifierRecipe,
) -> Classifier:
    """The classifier cached at ``path``, trained (and cached) first when absent or unreadable.

    Args:
        path: the cache file (:func:`cache_file`).
        training_data / test_data: zero-argument callables returning ``(images, labels)``
            of the training and held-out splits (only called to train).
        num_classes: the data's class count.
        recipe: the hyper-parameters.
    """
    key = str(path.resolve())
    if key in _LOADED and path.is_file():
        return _LOADED[key]
    model = _load(path, num_classes)
    if model is None:
        images, labels = training_data()
        log.info(
            "training the %d-class classifier on %d images (cached in %s)",
            num_classes,
            len(labels),
            path,
        )
        model = train_classifier(images, labels, num_classes, recipe)
        model.test_accuracy = accuracy(model, *test_data())
        _save(path, model)
    _LOADED[key] = model
    return model


def _load(path: Path, num_classes: int) -> Classifier | None:
    if not path.is_file():
        return None
    try:
        weights = load_file(path)
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        model = Classifier(weights["body.0.weight"].shape[1], num_classes)
        model.load_state_dict(weights)
        model.test_accuracy = float(meta.get("test_accuracy", "nan"))
    except (SafetensorError, OSError, RuntimeError, KeyError, ValueError) as exc:
        log.warning("retraining the classifier: %s is unreadable (%s)", path, exc)
        return None
    model.eval()
    model.requires_grad_(False)
    return model


def _save(path: Path, model: Classifier) -> None:
    """Write the weights (and test accuracy) atomically (a reader never sees a torn file)."""
    meta = {"version": str(VERSION), "test_accuracy": repr(model.test_accuracy)}
    write_bytes(path, safetensors_bytes(model.state_dict(), metadata=meta))


def dataset_tensors(data: Any, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a dataset's ``(image, label)`` pairs as two tensors (images as float32)."""
    from torch.utils.data import DataLoader

    images, labels = [], []
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    for x, y in loader:
        images.append(x.float())
        labels.append(torch.as_tensor(y).long())
    return torch.cat(images), torch.cat(labels)
