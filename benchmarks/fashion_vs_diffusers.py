"""Fashion-MNIST at equal wall-clock time: denoisekit's recipe, the naive recipe, diffusers.

Each contender trains for the same wall-clock budget on the same data and machine, then
draws ``-n`` samples at the same number of network evaluations (``--nfe``), and
``class-quality`` scores them against the held-out split (one classifier for all):

* ``denoisekit``: ``recipes/fashion.toml`` (its sampler at ``--nfe`` steps);
* ``naive``: the quickstart's choices (``recipes/quickstart.toml``: 2 residual blocks,
  attention at the middle resolution, eps-MSE, batch 128, DDIM eta 1) scaled to 28×28;
* ``diffusers``: diffusers' own recipe, as its ``train_unconditional.py`` example trains:
  ``UNet2DModel`` (widths chosen for a parameter count like the denoisekit recipe's),
  ``DDPMScheduler`` (linear betas, 1000 steps, eps), AdamW (lr 1e-4, betas 0.95/0.999,
  weight decay 1e-6), cosine lr with 500 warmup steps, gradient clipping at 1, ``EMAModel``
  (warm-up, power 3/4, max decay 0.9999); the example's batch of 16 is raised to 64 to
  use a CPU's cores. It samples through ``DDPMPipeline`` with diffusers'
  ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M, like denoisekit's recipe) at ``--nfe``.
  The example trains in fp32 by default (``mixed_precision = "no"``); denoisekit's recipes
  train in bf16 autocast where the CPU computes bf16 natively (AVX-512 BF16, AMX), so on
  such a CPU run it a second time with ``--diffusers-bf16 --contenders diffusers``;
* ``latent``: ``recipes/fashion-latent.toml`` (latent diffusion, docs/latent.md) on the
  trained autoencoder run ``--autoencoder`` (``runs/fashion-ae``): its budget is stage 2's
  training; the autoencoder's own training and the latent cache (built before the clock
  starts, once) are not in it. Its samples are decoded images.

A run's learning-rate schedule needs its step count up front, so each contender first
times a few steps (``--calibrate``), then trains ``budget / time per step`` steps; the
table reports the training time actually spent. Timings depend on the machine and its
load: run it alone on the machine. Usage::

    python benchmarks/fashion_vs_diffusers.py --minutes 20 -n 5000 --json fashion.json
    python benchmarks/fashion_vs_diffusers.py --minutes 1 -n 500 --contenders denoisekit,diffusers
    python benchmarks/fashion_vs_diffusers.py --minutes 10,20,40,80 --contenders diffusers
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("class_fd", "class_coverage", "class_tv", "memorised", "nn_ratio")
CONTENDERS = ("denoisekit", "naive", "diffusers", "latent")
#: Hook tables a timed run keeps (the others write files or evaluate: not training). The
#: checkpoint hook writes once, at the end (its ``every`` is set past the last step), so the
#: trained run can be sampled, edited and evaluated afterwards.
KEPT_HOOKS = ("ema", "amp", "checkpoint")


# --------------------------------------------------------------------------- recipes


def recipe_data(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The merged recipe data of a denoisekit contender, before its step count is set."""
    from denoisekit.host.recipe_files import read_recipe_data

    fashion, _ = read_recipe_data(ROOT / "recipes" / "fashion.toml")
    if name == "denoisekit":
        data = fashion
    elif name == "latent":  # recipes/fashion-latent.toml on a trained autoencoder run
        data, _ = read_recipe_data(ROOT / "recipes" / "fashion-latent.toml")
        data["latent"] = {**data["latent"], "autoencoder": str(args.autoencoder.resolve())}
    else:  # naive: the quickstart's choices, 28×28 Fashion-MNIST
        data, _ = read_recipe_data(ROOT / "recipes" / "quickstart.toml")
        data["data"] = fashion["data"]
        data["backbone"].update(image_size=28, attention_resolutions=[14])
        data["metrics"] = fashion["metrics"]
        data["name"] = "naive"
    data["data"] = {**data["data"], "root": str(args.data_root)}
    data["hooks"] = {k: v for k, v in data.get("hooks", {}).items() if k in KEPT_HOOKS}
    data["sampler"] = {**data["sampler"], "steps": args.nfe}
    data["metrics"] = {"class-quality": {**data["metrics"]["class-quality"]}}
    if args.classifier_steps:
        data["metrics"]["class-quality"]["steps"] = args.classifier_steps
    if args.tiny:  # the plumbing test: a minute's work becomes seconds
        data["backbone"].update(channels=8, num_res_blocks=1, groups=4, num_heads=1)
        data["train"].update(batch_size=4)
        data["lr_schedule"].update(warmup_steps=1)
    return data


def build_recipe(data: dict[str, Any], steps: int) -> Any:
    from denoisekit.host.recipe import recipe_from_data
    from denoisekit.host.registry import load_registry

    data = {**data, "train": {**data["train"], "steps": steps}}
    if "checkpoint" in data.get("hooks", {}):
        data["hooks"] = {**data["hooks"], "checkpoint": {"every": steps + 1, "keep": 1}}
    if data["lr_schedule"].get("warmup_steps", 0) >= steps:
        data["lr_schedule"] = {**data["lr_schedule"], "warmup_steps": max(0, steps // 10)}
    registry = load_registry(plugins=[])
    return recipe_from_data(data, registry, source=ROOT / "recipes" / "fashion.toml"), registry


def steps_for(budget_s: float, seconds_per_step: float) -> int:
    return max(1, math.floor(budget_s / max(seconds_per_step, 1e-9)))


# --------------------------------------------------------------------------- denoisekit


def run_denoisekit(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Calibrate, train for the budget, sample; returns the row (samples under ``images``)."""
    from denoisekit.engine.build import build_run
    from denoisekit.engine.evaluation import draw_samples
    from denoisekit.engine.loop import train

    data = recipe_data(name, args)

    def timed_run(steps: int, folder: str) -> tuple[Any, float]:
        recipe, _ = build_recipe(data, steps)
        run = build_run(recipe, out_dir=out / folder)
        start = time.perf_counter()
        train(run)
        return run, time.perf_counter() - start

    _, calib_s = timed_run(args.calibrate, f"{name}-calibrate")
    steps = steps_for(args.minutes * 60, calib_s / args.calibrate)
    run, seconds = timed_run(steps, name)
    samples = draw_samples(run, args.n, seed=args.seed, batch_size=args.batch_size)
    params = sum(p.numel() for p in run.model.parameters())
    return {
        "steps": steps,
        "train_seconds": seconds,
        "batch_size": run.recipe.train.batch_size,
        "parameters": params,
        "sample_ms_per_image": 1000 * samples.seconds / args.n,
        "nfe": samples.num_evaluations,
        "images": samples.images,
    }


# --------------------------------------------------------------------------- diffusers


def diffusers_unet(tiny: bool) -> Any:
    """``UNet2DModel`` for 28×28 grey images: 3 levels (28, 14, 7), attention at 7."""
    from diffusers import UNet2DModel

    widths = (8, 8, 8) if tiny else (32, 64, 64)
    return UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        layers_per_block=1 if tiny else 2,
        block_out_channels=widths,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=4 if tiny else 8,
    )


def run_diffusers(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from diffusers import DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    from denoisekit.plugins.data.torchvision_data import (
        TorchvisionDataConfig,
        build_torchvision_data,
    )

    data = build_torchvision_data(
        TorchvisionDataConfig(name="FashionMNIST", root=str(args.data_root)), train=True
    )
    images_u8 = data.images  # N×1×28×28 uint8
    batch = 4 if args.tiny else 64
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")

    def train(steps: int) -> tuple[Any, Any, float]:
        torch.manual_seed(args.seed)
        model = diffusers_unet(args.tiny)
        ema = EMAModel(
            model.parameters(),
            decay=0.9999,
            use_ema_warmup=True,
            inv_gamma=1.0,
            power=0.75,
            model_cls=type(model),
            model_config=model.config,
        )
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8
        )
        lr = get_cosine_schedule_with_warmup(optimizer, min(500, steps // 10), steps)
        g = torch.Generator().manual_seed(args.seed)
        model.train()
        start = time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(0, len(images_u8), (batch,), generator=g)
            x0 = images_u8[idx].float().div_(127.5).sub_(1.0)
            noise = torch.randn(x0.shape, generator=g)
            t = torch.randint(0, 1000, (batch,), generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.diffusers_bf16):
                pred = model(scheduler.add_noise(x0, noise, t), t).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(model.parameters())
        return model, ema, time.perf_counter() - start

    _, _, calib_s = train(args.calibrate)
    steps = steps_for(args.minutes * 60, calib_s / args.calibrate)
    model, ema, seconds = train(steps)
    ema.copy_to(model.parameters())
    model.eval()
    sampler = DPMSolverMultistepScheduler.from_config(scheduler.config)
    pipeline = DDPMPipeline(unet=model, scheduler=sampler)
    pipeline.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(args.seed)
    parts = []
    start = time.perf_counter()
    for first in range(0, args.n, args.batch_size):
        count = min(args.batch_size, args.n - first)
        result = pipeline(
            batch_size=count, generator=g, num_inference_steps=args.nfe, output_type="np"
        )
        parts.append(torch.from_numpy(result.images).permute(0, 3, 1, 2) * 2.0 - 1.0)
    sample_s = time.perf_counter() - start
    return {
        "steps": steps,
        "train_seconds": seconds,
        "batch_size": batch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "sample_ms_per_image": 1000 * sample_s / args.n,
        "nfe": float(args.nfe),
        "images": torch.cat(parts).float().clamp(-1, 1),
    }


# --------------------------------------------------------------------------- scoring


def save_samples(images: torch.Tensor, path: Path) -> None:
    """The contender's samples as 8-bit images (``eval samples.npz --reference ...`` reads it)."""
    from denoisekit.engine.sampling import save_npz

    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(path, images)


def score(images: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    """``class-quality`` of ``images`` against the held-out split (the fashion recipe's)."""
    from denoisekit.contracts import SampleSet
    from denoisekit.engine.evaluation import EvalContext, build_metrics

    recipe, registry = build_recipe(recipe_data("denoisekit", args), 1)
    metric = build_metrics(recipe, registry, ["class-quality"])["class-quality"]
    context = EvalContext(
        recipe=recipe,
        registry=registry,
        seed=args.seed,
        sample_set=SampleSet(images=images, labels=None),
    )
    return metric(context)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--minutes",
        default="20",
        help="training budget of each contender; several (5,10,20,40): each contender at "
        "each (the time diffusers needs to reach denoisekit's FD)",
    )
    parser.add_argument("-n", type=int, default=5000, help="samples scored per contender")
    parser.add_argument("--nfe", type=int, default=20, help="network evaluations per sample")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--data-root", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=Path("runs/fashion-vs-diffusers"))
    parser.add_argument("--calibrate", type=int, default=30, help="steps timed first")
    parser.add_argument("--batch-size", type=int, default=500, help="sampling batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier-steps", type=int, default=None)
    parser.add_argument(
        "--diffusers-bf16",
        action="store_true",
        help="diffusers trains under bf16 autocast (accelerate's mixed_precision='bf16'); "
        "denoisekit's recipes use bf16 where the CPU computes it natively ([hooks.amp] auto)",
    )
    parser.add_argument(
        "--autoencoder",
        type=Path,
        default=Path("runs/fashion-ae"),
        help="the latent contender's trained autoencoder (recipes/fashion-ae.toml's run)",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny networks (the test)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        parser.error(f"--contenders: unknown {', '.join(unknown)} (known: {', '.join(CONTENDERS)})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    budgets = [float(m) for m in str(args.minutes).split(",") if m.strip()]
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        for minutes in budgets:
            key = name if len(budgets) == 1 else f"{name}@{minutes:g}min"
            print(f"{key}: training for {minutes:g} min ...", flush=True)
            run_args = argparse.Namespace(**{**vars(args), "minutes": minutes})
            out = args.out / key
            if name == "diffusers":
                row = run_diffusers(run_args, out)
            else:
                row = run_denoisekit(name, run_args, out)
            images = row.pop("images")
            save_samples(images, out / "samples.npz")
            row.update(score(images, args))
            rows[key] = row
            brief = {k: row[k] for k in ("steps", "train_seconds", *KEYS)}
            print(f"{key}: {json.dumps(brief)}", flush=True)
    cols = ("parameters", "batch_size", "steps", "train_seconds", "nfe", "sample_ms_per_image")
    print("\n| contender | " + " | ".join(cols + KEYS) + " |\n|---|" + "---|" * len(cols + KEYS))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.4g}" for k in cols + KEYS) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
