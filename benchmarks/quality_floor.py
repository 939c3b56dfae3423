"""The real-data floor of ``class-quality``, and what degraded images score (docs/quality.md).

Scores, against the held-out split of a recipe's data (the same as ``denoisekit eval``):
a held-out subset of ``-n`` images (the floor: real images, the best a model can hope for),
the same images blurred (3×3 box) and noised (Gaussian, std 0.2 and 0.5 on [-1, 1]), and
``-n`` training images (a model that copies its training set). Prints a Markdown table.

    python benchmarks/quality_floor.py recipes/fashion.toml -n 5000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F

from denoisekit.contracts import SampleSet
from denoisekit.engine.components import load_components
from denoisekit.engine.evaluation import EvalContext, build_metrics
from denoisekit.host.recipe import load_recipe

KEYS = ("class_fd", "class_coverage", "class_tv", "class_accuracy", "memorised", "nn_ratio")


def cases(held_out: torch.Tensor, training: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """The image sets scored: name -> N×C×H×W in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    blurred = F.avg_pool2d(F.pad(held_out, (1, 1, 1, 1), mode="replicate"), 3, 1)
    noise = torch.randn(held_out.shape, generator=g)
    return {
        "held-out subset (the floor)": held_out,
        "held-out, 3x3 blur": blurred,
        "held-out + noise 0.2": (held_out + 0.2 * noise).clamp(-1, 1),
        "held-out + noise 0.5": (held_out + 0.5 * noise).clamp(-1, 1),
        "training images (copies)": training,
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("-n", type=int, default=5000, help="images per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    recipe = load_recipe(args.recipe, args.overrides)
    registry = load_components(recipe)
    metric = build_metrics(recipe, registry, ["class-quality"])["class-quality"]
    base = EvalContext(recipe=recipe, registry=registry, seed=args.seed)
    # A held-out subset of n: the seeded subset the reference statistics do not depend on.
    held_out, labels = base.reference_images(args.n)
    config = recipe.data.config
    if "hflip" in attrs.fields_dict(type(config)):
        config = attrs.evolve(config, hflip=0.0)  # exact copies
    training = registry.build("data", recipe.data.type, config, root=recipe.root)
    order = torch.randperm(len(training), generator=torch.Generator().manual_seed(args.seed))
    train_images = torch.stack([training[i][0] for i in order[: args.n].tolist()])
    results: dict[str, dict[str, float]] = {}
    for name, images in cases(held_out, train_images, args.seed).items():
        start = time.perf_counter()
        context = EvalContext(
            recipe=recipe,
            registry=registry,
            seed=args.seed,
            reference=base.reference_data(),
            sample_set=SampleSet(images=images, labels=labels if "held-out" in name else None),
        )
        results[name] = metric(context)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    print(
        f"\nclassifier held-out accuracy: {next(iter(results.values()))['classifier_accuracy']:.4f}"
    )
    print("\n| images | " + " | ".join(KEYS) + " |\n|---|" + "---|" * len(KEYS))
    for name, out in results.items():
        cells = [f"{out[k]:.4g}" if k in out else "-" for k in KEYS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
