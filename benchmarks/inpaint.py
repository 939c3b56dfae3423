"""Inpainting benchmark on the held-out digits (docs/steering.md, "Measured: inpainting").

For each mask and each method, every one of the 360 test digits of ``digits`` is inpainted
with ``denoisekit edit``'s code (:func:`denoisekit.engine.editing.edit_images`), then scored:

* ``accuracy``: the digit classifier (``digits-quality``'s) gives the original digit;
* ``known_error``: the largest change of a kept pixel (0: they are kept exactly);
* ``fd``: Fréchet distance of the classifier's features of the completions to those of the
  360 real test digits;
* ``passes``: network passes per image, forwards plus backward (vector–Jacobian) passes.

Beside them, two anchors: the real test digits themselves, and the nearest-neighbour paste
(the training digit whose kept pixels are nearest in L2 gives its other pixels). Usage::

    python benchmarks/inpaint.py RUN --json results.json            # every mask and method
    python benchmarks/inpaint.py RUN --masks top --methods repl-50,mmps1-33 -n 100

Masks: top (4 of 8 rows), left (4 of 8 columns), centre (the middle 4×4), boxes (three
random boxes of 2 to 4 pixels a side per image), pixels (each pixel with probability 1/2),
all seeded (:mod:`denoisekit.engine.masks`). Methods: ``NAME-STEPS`` with DDIM (eta 1) on
STEPS steps for ``repl`` (replacement), ``ddnm``, ``pigdm``, ``mmpsK`` (K conjugate-gradient
steps) and ``model`` (a run trained with ``[inpainting]``: its own conditioning), or
``repaint-S-J-R`` / ``ddnmtt-S-J-R`` (RePaint / DDNM with time travel, ``--repaint S J R``).
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
from denoisekit.plugins.metrics._digits_classifier import NUM_CLASSES, classify, load_or_train
from denoisekit.plugins.metrics.fd import feature_statistics, frechet_distance

#: At most 100 and at most 500 network passes per image.
METHODS = (
    "repl-100,ddnm-100,pigdm-50,mmps1-33,mmps2-25,repaint-20-5-5",
    "repl-500,ddnm-500,pigdm-250,mmps1-166,mmps2-125,repaint-100-10-5,ddnmtt-100-10-5",
)


def parse_method(spec: str) -> tuple[EditOptions, list[str], int, int]:
    """Edit options, sampler overrides, forwards and backward passes per image."""
    if m := re.fullmatch(r"(repaint|ddnmtt)-(\d+)-(\d+)-(\d+)", spec):
        steps, jump, resample = map(int, m.groups()[1:])
        method = "replacement" if m[1] == "repaint" else "ddnm"
        options = EditOptions(method=method, repaint=(steps, jump, resample))
        return options, [], repaint_evaluations(steps, jump, resample), 0
    m = re.fullmatch(r"(repl|ddnm|pigdm|model|mmps(\d+))-(\d+)", spec)
    if not m:
        raise SystemExit(f"bad method {spec!r}; see the module docstring")
    steps = int(m[3])
    overrides = ["sampler.type=ddim", f"sampler.steps={steps}", "sampler.eta=1.0"]
    if m[1].startswith("mmps"):
        k = int(m[2])
        return EditOptions(method="mmps", iterations=k), overrides, steps, steps * (k + 1)
    method = {"repl": "replacement", "ddnm": "ddnm", "pigdm": "pigdm", "model": "model"}[m[1]]
    return EditOptions(method=method), overrides, steps, steps if method == "pigdm" else 0


def nearest_paste(test: torch.Tensor, train: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each test image with its regenerated pixels from the training image whose kept
    pixels are nearest (L2 over the kept pixels)."""
    out = []
    for i in range(test.shape[0]):
        keep = 1.0 - (mask[i] if mask.shape[0] > 1 else mask[0])
        d = (((train - test[i]) * keep) ** 2).flatten(1).sum(1)
        j = int(d.argmin())
        out.append(torch.lerp(test[i], train[j], 1.0 - keep))
    return torch.stack(out)


def score(
    images: torch.Tensor,
    result: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    classifier: Any,
    reference: tuple[np.ndarray, np.ndarray],
) -> dict[str, float]:
    probs, feats = classify(classifier, quantize(result))
    digit = probs[:, :NUM_CLASSES].argmax(dim=1)
    keep = (1.0 - mask).expand_as(result).bool()
    error = float((result - images).abs()[keep].max()) if bool(keep.any()) else 0.0
    return {
        "accuracy": float((digit == labels).float().mean()),
        "confident": float((probs[:, :NUM_CLASSES].max(dim=1).values > 0.9).float().mean()),
        "known_error": error,
        "fd": frechet_distance(*feature_statistics(feats), *reference),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--masks", default=",".join(MASK_KINDS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("-n", type=int, default=360, help="test digits used (first n)")
    parser.add_argument("--batch-size", type=int, default=360)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="append one JSON line per result here")
    parser.add_argument("--save", type=Path, help="folder for the results as .npz")
    parser.add_argument(
        "--grid", type=Path, help="also write GRID-MASK.png: input, mask, each method (16 digits)"
    )
    args = parser.parse_args(argv)

    base = load_trained(args.run)
    size = base.image_shape[-1]
    test = denoisekit.build("data", "digits", image_size=size, root=Path.cwd(), train=False)
    train = denoisekit.build("data", "digits", image_size=size, root=Path.cwd(), train=True)
    images, labels = test.images[: args.n], test.labels[: args.n].long()
    classifier = load_or_train(default_cache_dir(), lambda: train, size=size)
    _, feats = classify(classifier, quantize(test.images))
    reference = feature_statistics(feats)

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")

    real = score(images, images, torch.zeros(1, 1, size, size), labels, classifier, reference)
    emit({"mask": "none", "method": "real digits", "n": args.n, **real})
    for kind in args.masks.split(","):
        mask = make_mask(kind, args.n, size, args.seed)
        pasted = nearest_paste(images, train.images, mask)
        row = score(images, pasted, mask, labels, classifier, reference)
        emit({"mask": kind, "method": "nearest-neighbour paste", "n": args.n, **row})
        shown = mask[:16] if mask.shape[0] > 1 else mask.expand(16, -1, -1, -1)
        rows = [("input", images[:16]), ("mask", shown * 2 - 1), ("nearest paste", pasted[:16])]
        for spec in args.methods.split(","):
            options, overrides, forwards, backward = parse_method(spec)
            run = load_trained(args.run, overrides=overrides)
            start = time.perf_counter()
            result = edit_images(
                run, images, mask=mask, options=options, seed=args.seed, batch_size=args.batch_size
            )
            seconds = time.perf_counter() - start
            row = score(images, result, mask, labels, classifier, reference)
            emit(
                {
                    "mask": kind,
                    "method": spec,
                    "n": args.n,
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
