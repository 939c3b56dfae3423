"""Pixel space is bit-identical to what it was before latent diffusion (issue 22): the
quickstart recipe's first training losses and a DDIM sample, on one CPU thread, equal the
values recorded from the code before the latent stage existed
(``tests/data/pixel_golden.json``; regenerate it only for an intended change of pixel
training or sampling: ``python -m tests.core.test_pixel_golden``)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from denoisekit import hookimpl

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "pixel_golden.json"
OVERRIDES = [
    "train.steps=3",
    "train.batch_size=16",
    "train.device=cpu",
    "hooks.checkpoint.every=1000",
    "hooks.preview.every=1000",
    "lr_schedule.warmup_steps=1",
]


class _Losses:
    def __init__(self) -> None:
        self.losses: list[str] = []

    @hookimpl
    def denoisekit_train_step_end(self, loss: torch.Tensor) -> None:
        self.losses.append(float(loss).hex())


def pixel_values(folder: Path) -> dict[str, Any]:
    """Three quickstart training losses (float hex) and the sha256 of two DDIM samples."""
    from denoisekit.engine.build import build_run
    from denoisekit.engine.loop import train
    from denoisekit.host.recipe import load_recipe
    from denoisekit.testing.conformance import single_thread

    recipe_path = folder / "quickstart.toml"
    shutil.copy(ROOT / "recipes" / "quickstart.toml", recipe_path)
    losses = _Losses()
    with single_thread():
        recipe = load_recipe(recipe_path, OVERRIDES)
        data = recipe.to_dict()
        run = build_run(recipe, out_dir=folder / "run", extra_hooks=[losses])
        train(run)
        images = run.sample(2, generator=torch.Generator().manual_seed(0))
    digest = hashlib.sha256(images.float().contiguous().numpy().tobytes()).hexdigest()
    return {"losses": losses.losses, "samples_sha256": digest, "recipe_keys": sorted(data)}


def test_quickstart_is_bit_identical(tmp_path: Path) -> None:
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert pixel_values(tmp_path) == expected


if __name__ == "__main__":  # record the golden values
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        values = pixel_values(Path(folder))
    GOLDEN.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(json.dumps(values, indent=2) + "\n")
