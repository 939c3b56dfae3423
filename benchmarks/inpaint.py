"""Inpainting benchmark on held-out images (docs/steering.md, "Measured: inpainting").

For each mask and each method, the first ``n`` held-out images are inpainted with
``denoisekit edit``'s code (:func:`denoisekit.engine.editing.edit_images`), then scored:

* ``accuracy``: a classifier gives the original class;
* ``known_error``: the largest change of a kept pixel (0: they are kept exactly);
* ``fd``: Fréchet distance of the classifier's features of the completions to those of the
  held-out images;
* ``passes``: network passes per image, forwards plus backward (vector–Jacobian) passes.

Beside them, two anchors: the real held-out images themselves, and the nearest-neighbour
paste (the training image whose kept pixels are nearest in L2 gives its other pixels).

The data is the run's own. On ``digits``: the 360 test digits, the digit classifier of
``digits-quality``, all 360 test digits as the FD reference; ``--validation`` uses the
``val`` digits (288) and pastes from ``fit`` instead, for a run trained on
``data.split = "fit"`` (choosing settings without the test digits). On other labelled data
(Fashion-MNIST): a seeded subset of ``n`` held-out images, the classifier of
``[metrics.class-quality]`` (trained on the training split and cached), those ``n``
images as the FD reference, and the whole training split (flips off) as the paste's bank.
Usage::

    python benchmarks/inpaint.py RUN --json results.json            # every mask and method
    python benchmarks/inpaint.py RUN --masks top --methods repl-50,mmps1-33 -n 100

Masks: top (4 of 8 rows), left (4 of 8 columns), centre (the middle 4×4), boxes (three
random boxes of 2 to 4 pixels a side per image), pixels (each pixel with probability 1/2),
all seeded (:mod:`denoisekit.engine.masks`). Methods: ``NAME-STEPS`` with DDIM (eta 1) on
STEPS steps for ``repl`` (replacement), ``ddnm``, ``pigdm``, ``mmpsK`` (K conjugate-gradient
steps), ``dps`` and ``model`` (a run trained with ``[inpainting]``: its own conditioning),
or ``repaint-S-J-R`` / ``ddnmtt-S-J-R`` (RePaint / DDNM with time travel, ``--repaint S J
R``). Suffixes: ``@etaE`` samples with DDIM eta E instead of 1, ``@wW`` guides ``model``
with scale W on the kept pixels (two forwards a step; without it, the run's
``[inpainting] guidance``).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import denoisekit
from denoisekit.engine.build import load_trained
from denoisekit.engine.editing import EditOptions, edit_images
from denoisekit.engine.evaluation import default_cache_dir
from denoisekit.engine.figures import save_labelled_rows
from denoisekit.engine.masks import MASK_KINDS, make_mask
from denoisekit.engine.repaint import num_evaluations as repaint_evaluations
from denoisekit.images import quantize
from denoisekit.plugins.metrics.fd import feature_statistics, frechet_distance

#: At most 100 and at most 500 network passes per image.
METHODS = (
    "repl-100,ddnm-100,pigdm-50,mmps1-33,mmps2-25,repaint-20-5-5",
    "repl-500,ddnm-500,pigdm-250,mmps1-166,mmps2-125,repaint-100-10-5,ddnmtt-100-10-5",
)


def parse_method(spec: str) -> tuple[EditOptions, list[str], int, int]:
    """Edit options, sampler overrides, forwards and backward passes per image."""
    m = re.fullmatch(r"(.+?)(?:@eta([\d.]+))?(?:@w([\d.]+))?", spec)
    assert m is not None
    name, eta, scale = m[1], float(m[2] or 1.0), float(m[3]) if m[3] else None
    if m := re.fullmatch(r"(repaint|ddnmtt)-(\d+)-(\d+)-(\d+)", name):
        steps, jump, resample = map(int, m.groups()[1:])
        method = "replacement" if m[1] == "repaint" else "ddnm"
        options = EditOptions(method=method, repaint=(steps, jump, resample))
        return options, [], repaint_evaluations(steps, jump, resample), 0
    m = re.fullmatch(r"(repl|ddnm|pigdm|dps|model|mmps(\d+))-(\d+)", name)
    if not m or (scale is not None and m[1] != "model"):
        raise SystemExit(f"bad method {spec!r}; see the module docstring")
    steps = int(m[3])
    overrides = ["sampler.type=ddim", f"sampler.steps={steps}", f"sampler.eta={eta}"]
    if m[1].startswith("mmps"):
        k = int(m[2])
        return EditOptions(method="mmps", iterations=k), overrides, steps, steps * (k + 1)
    method = {"repl": "replacement", "model": "model"}.get(m[1], m[1])
    forwards = steps * (2 if scale not in (None, 1.0) else 1)
    backward = steps if method in ("pigdm", "dps") else 0
    return EditOptions(method=method, scale=scale), overrides, forwards, backward


def nearest_paste(
    test: torch.Tensor, train: torch.Tensor, mask: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """Each test image with its regenerated pixels from the training image whose kept
    pixels are nearest (L2 over the kept pixels): ``|k (b - x)|^2 = k.b^2 - 2 (k x).b``
    plus a constant per test image, as matrix products over chunks of the bank."""
    keep = (1.0 - mask).expand(test.shape[0], *test.shape[1:]).flatten(1).double()
    x = test.flatten(1).double()
    best = torch.full((test.shape[0],), float("inf"), dtype=torch.float64)
    index = torch.zeros(test.shape[0], dtype=torch.long)
    for start in range(0, train.shape[0], chunk):
        b = train[start : start + chunk].flatten(1).double()
        d = keep @ (b * b).T - 2.0 * (keep * x) @ b.T
        value, where = d.min(dim=1)
        better = value < best
        best = torch.where(better, value, best)
        index = torch.where(better, where + start, index)
    return torch.lerp(test, train[index], mask.expand_as(test))


class Judge:
    """The classifier that scores completions: class probabilities and features."""

    def __init__(self, classify: Any, num_classes: int) -> None:
        self.classify = classify
        self.num_classes = num_classes

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs, feats = self.classify(quantize(images))
        return probs[:, : self.num_classes], feats


def digits_data(base: Any, n: int, validation: bool) -> tuple[Any, ...]:
    """Held-out digits and labels, the paste's bank and the judge (see the module)."""
    from denoisekit.plugins.metrics._digits_classifier import NUM_CLASSES, classify, load_or_train

    size = base.image_shape[-1]
    split = getattr(base.recipe.data.config, "split", None)
    if validation and split != "fit":
        raise SystemExit(
            f"--validation: this run trained on data.split = {split!r}; train one with "
            "--set 'data.split=\"fit\"' (its val digits are then unseen)"
        )
    held, bank = ("val", "fit") if validation else ("test", "train")

    def digits(name: str) -> Any:
        return denoisekit.build(
            "data", "digits", image_size=size, root=Path.cwd(), split=name, train=True
        )

    test, train = digits(held), digits(bank)
    classifier = load_or_train(default_cache_dir(), lambda: digits("train"), size=size)
    judge = Judge(lambda x: classify(classifier, x), NUM_CLASSES)
    return test.images[:n], test.labels[:n].long(), test.images, train.images, judge


def labelled_data(base: Any, n: int, seed: int, classifier_steps: int) -> tuple[Any, ...]:
    """The same for any labelled data, judged by ``class-quality``'s classifier."""
    import attrs

    from denoisekit.engine.evaluation import EvalContext
    from denoisekit.plugins.metrics import _class_classifier as cc
    from denoisekit.plugins.metrics.class_quality import ClassQualityConfig, ClassQualityMetric

    context = EvalContext(run=base, seed=seed)
    images, labels = context.reference_images(n)
    if labels is None:
        raise SystemExit(f"data type {base.recipe.data.type!r} has no labels to score by")
    metric = ClassQualityMetric(ClassQualityConfig(steps=classifier_steps))
    classifier = metric.classifier(context)
    config = base.recipe.data.config
    if attrs.has(type(config)) and "hflip" in attrs.fields_dict(type(config)):
        config = attrs.evolve(config, hflip=0.0)
    data = base.registry.build(
        "data", base.recipe.data.type, config, root=base.recipe.root, train=True
    )
    bank, _ = cc.dataset_tensors(data)
    judge = Judge(lambda x: cc.classify(classifier, x), int(classifier.head.out_features))
    return images, labels, images, bank, judge


def score(
    images: torch.Tensor,
    result: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    judge: Judge,
    reference: tuple[np.ndarray, np.ndarray],
) -> dict[str, float]:
    probs, feats = judge(result)
    right = probs.argmax(dim=1) == labels
    keep = (1.0 - mask).expand_as(result).bool()
    error = float((result - images).abs()[keep].max()) if bool(keep.any()) else 0.0
    return {
        "accuracy": float(right.float().mean()),
        # its standard error over the images (a binomial proportion)
        "accuracy_se": float(right.float().std() / len(right) ** 0.5) if len(right) > 1 else 0.0,
        "confident": float((probs.max(dim=1).values > 0.9).float().mean()),
        "known_error": error,
        "fd": frechet_distance(*feature_statistics(feats), *reference),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--masks", default=",".join(MASK_KINDS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("-n", type=int, default=360, help="held-out images used (first n)")
    parser.add_argument(
        "--validation", action="store_true", help="digits: the val split, pasting from fit"
    )
    parser.add_argument("--batch-size", type=int, default=360)
    parser.add_argument(
        "--classifier-steps",
        type=int,
        default=1500,
        help="not digits: training steps of class-quality's classifier (its default 1500)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="append one JSON line per result here")
    parser.add_argument("--save", type=Path, help="folder for the results as .npz")
    parser.add_argument(
        "--grid", type=Path, help="also write GRID-MASK.png: input, mask, each method (16 digits)"
    )
    args = parser.parse_args(argv)

    base = load_trained(args.run)
    size = base.image_shape[-1]
    if base.recipe.data.type == "digits":
        images, labels, held_out, bank, judge = digits_data(base, args.n, args.validation)
    elif args.validation:
        raise SystemExit("--validation: only on digits (its fit / val splits)")
    else:
        images, labels, held_out, bank, judge = labelled_data(
            base, args.n, args.seed, args.classifier_steps
        )
    n = images.shape[0]
    reference = feature_statistics(judge(held_out)[1])

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")

    real = score(images, images, torch.zeros(1, 1, size, size), labels, judge, reference)
    emit({"mask": "none", "method": "real images", "n": n, **real})
    for kind in args.masks.split(","):
        mask = make_mask(kind, n, size, args.seed)
        pasted = nearest_paste(images, bank, mask)
        row = score(images, pasted, mask, labels, judge, reference)
        emit({"mask": kind, "method": "nearest-neighbour paste", "n": n, **row})
        shown = mask[:16] if mask.shape[0] > 1 else mask.expand(16, -1, -1, -1)
        rows = [("input", images[:16]), ("mask", shown * 2 - 1), ("nearest paste", pasted[:16])]
        for spec in args.methods.split(","):
            options, overrides, forwards, backward = parse_method(spec)
            run = load_trained(args.run, overrides=overrides)
            if options.method == "model" and options.scale is None:  # the run's guidance
                forwards *= 1 if run.recipe.inpainting.guidance == 1 else 2
            start = time.perf_counter()
            result = edit_images(
                run, images, mask=mask, options=options, seed=args.seed, batch_size=args.batch_size
            )
            seconds = time.perf_counter() - start
            row = score(images, result, mask, labels, judge, reference)
            emit(
                {
                    "mask": kind,
                    "method": spec,
                    "n": n,
                    "forwards": forwards,
                    "backward": backward,
                    "passes": forwards + backward,
                    "seconds": round(seconds, 1),
                    **row,
                }
            )
            rows.append((spec, result[:16]))
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                np.savez(args.save / f"{kind}-{spec}.npz", result=result.numpy(), mask=mask.numpy())
        if args.grid:
            save_labelled_rows(args.grid.with_name(f"{args.grid.stem}-{kind}.png"), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
