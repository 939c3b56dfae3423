"""``denoisekit compare``: run variants of recipes and log them side by side.

Variants are the cartesian product of ``--vary KEY=V1,V2,...`` over one or more recipe
files. Variants that differ only in sampling options (the ``[sampler]`` and
``[metrics.*]`` tables) share one trained model; the others train their own. Everything
goes under one TensorBoard log directory:

```
OUT/
  train/<group>/        one training run per distinct training set-up (loss curves)
  variants/<variant>/   hparams + metrics of one variant (TensorBoard's HParams tab)
  compare.md  compare.csv  compare.png   (one row of images per variant, same noise)
```
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from denoisekit.contracts import Metric, optional
from denoisekit.engine.figures import labelled_rows, save_labelled_rows
from denoisekit.engine.run_folder import StoredRun
from denoisekit.errors import DenoisekitError
from denoisekit.host.recipe import Recipe, load_recipe, parse_override

#: Tables that only sampling and evaluation read: variants differing only here share a model.
SAMPLING_TABLES = ("sampler", "guidance", "metrics")


@attrs.frozen
class Variant:
    """One combination of recipe file and ``--vary`` assignments."""

    name: str
    recipe: Recipe
    assignments: tuple[tuple[str, Any], ...]
    train_key: str


def split_values(text: str) -> list[str]:
    """Split ``a,b,[1,2],'x,y'`` at top-level commas (not inside brackets or quotes)."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def parse_vary(text: str) -> tuple[str, list[str]]:
    """``sampler.steps=10,20`` → ``("sampler.steps", ["10", "20"])``."""
    key, sep, values = text.partition("=")
    if not sep or not values.strip():
        raise DenoisekitError(
            f"--vary {text!r}: expected KEY.PATH=V1,V2,... e.g. sampler.steps=10,50"
        )
    parse_override(f"{key}=0")  # validates the key path
    return key.strip(), split_values(values)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", text).strip("_") or "base"


def _train_key(recipe: Recipe) -> str:
    data = recipe.to_dict()
    for key in (*SAMPLING_TABLES, "name", "description"):
        data.pop(key, None)
    return json.dumps(data, sort_keys=True, default=str)


def plan(
    recipes: Sequence[Path],
    vary: Sequence[str],
    overrides: Sequence[str] = (),
    *,
    from_run: StoredRun | None = None,
) -> list[Variant]:
    """Every variant, in order: recipe files, then the ``--vary`` product.

    With ``from_run`` (a run opened with :func:`~denoisekit.engine.run_folder.open_run`)
    the variants start from that run's stored recipe and may vary only sampling options
    (``[sampler]``, ``[metrics]``): they all reuse its trained weights.
    """
    axes = [parse_vary(v) for v in vary]
    combos = list(itertools.product(*[[(k, v) for v in values] for k, values in axes]))
    sources: list[Path | None] = [None] if from_run is not None else list(recipes)
    recipe_of_run = from_run.recipe if from_run is not None else None
    variants: list[Variant] = []
    for path in sources:
        for combo in combos:
            sets = [*overrides, *(f"{k}={v}" for k, v in combo)]
            if recipe_of_run is not None:
                recipe = recipe_of_run(sets)
            else:
                recipe = load_recipe(path, sets)
                if "tensorboard" not in recipe.hooks:  # loss curves in the one log directory
                    recipe = load_recipe(path, [*sets, "hooks.tensorboard={}"])
            parts = [f"{k}={v}" for k, v in combo]
            if len(sources) > 1 and path is not None:
                parts.insert(0, path.stem)
            if recipe.trains_autoencoder:
                where = path if path is not None else from_run.checkpoint  # type: ignore[union-attr]
                raise DenoisekitError(
                    f"{where}: an autoencoder recipe samples nothing to compare; compare "
                    "latent diffusion recipes instead (docs/latent.md)"
                )
            stem = path.stem if path is not None else recipe.name
            name = _slug(",".join(parts)) if parts else _slug(stem)
            variants.append(
                Variant(
                    name=name,
                    recipe=recipe,
                    assignments=tuple((k, parse_override(f"{k}={v}")[1]) for k, v in combo),
                    train_key=_train_key(recipe),
                )
            )
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise DenoisekitError("two variants have the same name: vary different keys or files")
    if recipe_of_run is not None and {v.train_key for v in variants} != {
        _train_key(recipe_of_run(()))
    }:
        raise DenoisekitError(
            f"{from_run.folder}: variants of a trained run may vary only [sampler] and [metrics] "
            "options; vary training options with a recipe file instead"
        )
    return variants


def training_groups(variants: Sequence[Variant]) -> dict[str, list[Variant]]:
    """Variants by training set-up; each group trains once. Keys are group names."""
    by_key: dict[str, list[Variant]] = {}
    for variant in variants:
        by_key.setdefault(variant.train_key, []).append(variant)
    several_files = len({str(v.recipe.path) for v in variants}) > 1
    groups: dict[str, list[Variant]] = {}
    for members in by_key.values():
        # A group is named by its training-relevant assignments (and file, if several).
        first = members[0]
        parts = [
            f"{k}={_text(v)}"
            for k, v in first.assignments
            if k.split(".")[0] not in SAMPLING_TABLES
        ]
        if several_files and first.recipe.path is not None:
            parts.insert(0, first.recipe.path.stem)
        groups[_slug(",".join(parts)) if parts else "base"] = members
    return groups


def _text(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _hparams(variant: Variant) -> dict[str, Any]:
    """The variant's varying keys plus every component's type, for the HParams tab."""
    recipe = variant.recipe
    out: dict[str, Any] = {
        kind: getattr(recipe, kind).type
        for kind in ("schedule", "backbone", "loss", "sampler", "optimizer")
    }
    for key, value in variant.assignments:
        if key.endswith(".type") and key.split(".")[0] in out:
            continue  # already there as the component's type
        out[key] = value if isinstance(value, int | float | str | bool) else json.dumps(value)
    return out


def run_compare(
    variants: Sequence[Variant],
    *,
    out_dir: Path,
    num_samples: int = 64,
    seed: int = 0,
    batch_size: int = 64,
    row_images: int = 8,
    metrics: Sequence[str] = (),
    log: Callable[[str], None] = print,
    from_run: StoredRun | None = None,
) -> list[dict[str, Any]]:
    """Train each group once (or load the opened run ``from_run``), sample and score every
    variant."""
    from torch.utils.tensorboard import SummaryWriter

    from denoisekit.engine import loop
    from denoisekit.engine.build import build_run, load_trained
    from denoisekit.engine.evaluation import draw_samples

    if from_run is None:
        _check_metric_names(variants, metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    picture_rows: list[torch.Tensor] = []
    row_labels: list[str] = []
    for group, members in training_groups(variants).items():
        recipe = members[0].recipe
        if from_run is not None:
            log(f"sampling {len(members)} variant(s) from the trained run {from_run.folder}")
            run = load_trained(from_run)
        else:
            log(f"training {group} ({recipe.train.steps} steps) for {len(members)} variant(s)")
            run = build_run(recipe, out_dir=out_dir / "train" / group)
            loop.train(run)
        train_loss = _last_loss(run.paths.metrics)
        model_cache: dict[str, dict[str, float]] = {}
        for variant in members:
            sampler_choice = variant.recipe.sampler
            sampler = run.registry.build("sampler", sampler_choice.type, sampler_choice.config)
            # The trained run with the variant's sampling tables (sampler, guidance).
            variant_run = attrs.evolve(run, recipe=variant.recipe, sampler=sampler)
            sample_set = draw_samples(variant_run, num_samples, seed=seed, batch_size=batch_size)
            values: dict[str, float] = {
                "sec_per_image": sample_set.seconds / num_samples,
                "nfe_per_image": sample_set.num_evaluations,
            }
            if train_loss is not None:
                values["train_loss"] = train_loss
            values.update(
                _metric_values(
                    variant_run, variant, sample_set, metrics, seed, batch_size, model_cache
                )
            )
            picture_rows.append(sample_set.images[:row_images])
            row_labels.append(variant.name)
            hparams = _hparams(variant)
            writer = SummaryWriter(str(out_dir / "variants" / variant.name))
            writer.add_hparams(
                hparams, {f"metrics/{k}": v for k, v in values.items()}, run_name="."
            )
            # The variant's same-noise samples, scaled up to be seen (Images tab).
            writer.add_image(
                "samples", labelled_rows([(variant.name, picture_rows[-1])]), dataformats="HWC"
            )
            writer.close()
            row = {"variant": variant.name, "train_group": group, **hparams, **values}
            rows.append(row)
            log("  " + "  ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
    _write_outputs(out_dir, rows, list(zip(row_labels, picture_rows, strict=True)), row_images)
    return rows


def _check_metric_names(variants: Sequence[Variant], metrics: Sequence[str]) -> None:
    """An unknown ``--metric`` fails before anything trains: each name must be a
    ``[metrics.NAME]`` table of every variant or a metric its plugins register."""
    from denoisekit.engine.components import load_components
    from denoisekit.host.registry import Registry

    registries: dict[tuple[Any, ...], Registry] = {}
    for variant in variants:
        recipe = variant.recipe
        missing = [name for name in metrics if name not in recipe.metrics]
        if not missing:
            continue
        search = [recipe.path.parent.resolve()] if recipe.path is not None else []
        key = (recipe.plugins, *search)
        if key not in registries:  # the registry build_run will build
            registries[key] = load_components(recipe)
        for name in missing:
            registries[key].get("metric", name)


def _metric_values(
    run: Any,
    variant: Variant,
    sample_set: Any,
    metrics: Sequence[str],
    seed: int,
    batch_size: int,
    model_cache: dict[str, dict[str, float]],
) -> dict[str, float]:
    """Score a variant's samples; metrics that ignore samples (NLL) run once per model."""
    if not metrics:
        return {}
    from denoisekit.engine.evaluation import EvalContext, build_metrics, evaluate

    context = EvalContext(
        run=run,
        seed=seed,
        num_samples=sample_set.num_images,
        batch_size=batch_size,
        recipe=variant.recipe,
        sample_set=sample_set,
    )
    built = build_metrics(variant.recipe, run.registry, names=list(metrics))
    values: dict[str, float] = {}
    per_sample = {}
    for name, metric in built.items():
        if optional(metric, Metric, "uses_samples"):
            per_sample[name] = metric
        else:
            if name not in model_cache:
                model_cache[name] = evaluate(context, {name: metric})
            values.update(model_cache[name])
    values.update(evaluate(context, per_sample))
    return values


def _last_loss(path: Path) -> float | None:
    if not path.is_file():
        return None
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    losses = [line["loss"] for line in lines if "loss" in line]
    return losses[-1] if losses else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _write_outputs(
    out_dir: Path,
    rows: list[dict[str, Any]],
    picture_rows: list[tuple[str, torch.Tensor]],
    row_images: int,
) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with (out_dir / "compare.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in rows),
        "",
        "![one row per variant, in table order, all from the same initial noise](compare.png)",
        "",
    ]
    (out_dir / "compare.md").write_text("\n".join(lines), encoding="utf-8")
    if picture_rows:
        count = min(row_images, *(images.shape[0] for _, images in picture_rows))
        shown = [(label, images[:count]) for label, images in picture_rows]
        save_labelled_rows(out_dir / "compare.png", shown)
