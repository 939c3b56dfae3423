"""Reconstruction quality of an autoencoder run (docs/latent.md): PSNR and the class-quality
FD of its reconstructions of held-out images.

Takes the seeded held-out subset of ``-n`` images of the reference recipe's data (what
``denoisekit eval`` and ``benchmarks/quality_floor.py`` score against), reconstructs them
with the run's sampling (EMA) weights, ``decode(mode(encode(x)))`` and, with
``--posterior sample``, ``decode(z)`` with ``z ~ q(z|x)``, and reports, on 8-bit images:

* ``psnr``: the mean over images of ``10 log10(1 / MSE)`` on [0, 1] pixels, and
  ``psnr_of_mean_mse`` (of the MSE averaged over every pixel); ``l1``: the mean absolute
  error on [0, 1] pixels;
* ``class_fd`` (and the rest of ``[metrics.class-quality]``) of the reconstructions, beside
  the same numbers of the held-out images themselves (the floor).

    python benchmarks/autoencoder_quality.py runs/fashion-ae -n 5000   # recipes/fashion.toml
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from denoisekit.contracts import SampleSet
from denoisekit.denoiser import eval_mode
from denoisekit.engine.build import load_trained
from denoisekit.engine.components import load_components
from denoisekit.engine.evaluation import EvalContext, build_metrics
from denoisekit.engine.run_folder import open_run
from denoisekit.host.recipe import load_recipe
from denoisekit.images import quantize

KEYS = ("psnr", "psnr_of_mean_mse", "l1", "class_fd", "class_coverage", "class_tv")


@torch.no_grad()
def reconstruct(
    autoencoder: torch.nn.Module,
    images: torch.Tensor,
    *,
    posterior: str,
    batch_size: int,
    seed: int,
) -> torch.Tensor:
    """Reconstructions in [-1, 1] (float32, CPU), in batches; ``posterior`` "mode" or
    "sample" (one generator seeded ``seed`` for the whole set)."""
    generator = torch.Generator().manual_seed(seed)
    device = autoencoder.shift.device
    out = []
    with eval_mode(autoencoder):
        for batch in images.split(batch_size):
            dist = autoencoder.encode(batch.to(device))
            z = dist.mode() if posterior == "mode" else dist.sample(generator)
            out.append(autoencoder.decode(z).float().cpu().clamp(-1, 1))
    return torch.cat(out)


def pixel_errors(images: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, float]:
    """PSNR (per image, averaged; and of the mean MSE) and L1 on 8-bit [0, 1] pixels."""
    a = (quantize(images) + 1) / 2
    b = (quantize(reconstructions) + 1) / 2
    mse = (a - b).double().square().flatten(1).mean(dim=1).clamp(min=1e-12)
    return {
        "psnr": float((-10 * torch.log10(mse)).mean()),
        "psnr_of_mean_mse": float(-10 * torch.log10(mse.mean())),
        "l1": float((a - b).double().abs().mean()),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the autoencoder run folder or checkpoint")
    parser.add_argument("--reference", type=Path, default=Path("recipes/fashion.toml"))
    parser.add_argument("-n", type=int, default=5000, help="held-out images")
    parser.add_argument("--posterior", choices=("mode", "sample", "both"), default="both")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fd", action="store_true", help="PSNR only (no classifier)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    run = load_trained(open_run(args.run), device="cpu", allow_autoencoder=True)
    autoencoder = run.pm.hook.denoisekit_sampling_model(run=run)
    recipe = load_recipe(args.reference)
    registry = load_components(recipe)
    base = EvalContext(recipe=recipe, registry=registry, seed=args.seed)
    held_out, labels = base.reference_images(args.n)
    metric = None if args.no_fd else build_metrics(recipe, registry, ["class-quality"])
    sets = {"held-out images (the floor)": held_out}
    for posterior in ("mode", "sample") if args.posterior == "both" else (args.posterior,):
        sets[f"reconstructions ({posterior})"] = reconstruct(
            autoencoder, held_out, posterior=posterior, batch_size=args.batch_size, seed=args.seed
        )
    results: dict[str, dict[str, float]] = {}
    for name, images in sets.items():
        start = time.perf_counter()
        results[name] = pixel_errors(held_out, images)
        if metric is not None:
            context = EvalContext(
                recipe=recipe,
                registry=registry,
                seed=args.seed,
                reference=base.reference_data(),
                sample_set=SampleSet(images=images, labels=labels),
            )
            results[name].update(metric["class-quality"](context))
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    print(f"\n{args.run} (step {run.step}), {len(held_out)} held-out images of {args.reference}")
    print("\n| images | " + " | ".join(KEYS) + " |\n|---|" + "---|" * len(KEYS))
    for name, out in results.items():
        cells = [f"{out[k]:.4g}" if k in out else "-" for k in KEYS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
