"""The shipped recipes: all validate; the paper and folder recipes run on generated data."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from denoisekit.cli import main
from denoisekit.engine.build import build_run
from denoisekit.engine.loop import train
from denoisekit.files import CACHE_ENV
from denoisekit.host.recipe import load_recipe
from tests.plugins.test_data_idx import fake as fake_idx
from tests.plugins.test_data_torchvision import fake_cifar10
from tests.test_latent_runs import make_ae_run

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))


#: The autoencoder recipes/fashion-latent.toml expects: 1×28×28 images → 4×7×7 latents.
FASHION_AE = {"type": "kl", "in_channels": 1, "block_channels": [8, 16, 16],
              "num_res_blocks": 1, "latent_channels": 4, "groups": 4}  # fmt: skip


@pytest.fixture(scope="module")
def fashion_ae(tmp_path_factory) -> Path:
    """A small random autoencoder run in place of runs/fashion-ae."""
    return make_ae_run(tmp_path_factory.mktemp("ae") / "fashion-ae", table=FASHION_AE)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path, fashion_ae):
    latent = "latent" in tomllib.loads(path.read_text(encoding="utf-8"))
    recipe = load_recipe(path, [f"latent.autoencoder='{fashion_ae}'"] if latent else [])
    assert recipe.name == path.stem


def test_the_latent_recipe_says_to_train_its_autoencoder_first(tmp_path, capsys):
    recipe = tmp_path / "recipes" / "fashion-latent.toml"
    recipe.parent.mkdir()
    shutil.copy(Path(__file__).parents[1] / "recipes" / recipe.name, recipe)
    assert main(["recipe", "check", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "latent.autoencoder" in err and "denoisekit train recipes/fashion-ae.toml" in err


def test_the_latent_recipe_runs_on_generated_idx_files(tmp_path, fashion_ae, monkeypatch):
    """Stage 2 on a few generated images with a random autoencoder: the cache is built,
    two steps trained, the end-of-training class-quality evaluation scores decoded images."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    fake_idx(tmp_path / "fashion", gz=True, n_train=8, n_test=6)
    path = Path(__file__).parents[1] / "recipes" / "fashion-latent.toml"
    overrides = [
        *FEW_STEPS,
        f"latent.autoencoder='{fashion_ae}'",
        f"data.root='{tmp_path / 'fashion'}'",
        "hooks.evaluate.num_samples=4",
        "hooks.evaluate.batch_size=4",
        "metrics.class-quality.steps=3",
        "lr_schedule.warmup_steps=1",
    ]
    sets = [arg for override in overrides for arg in ("--set", override)]
    assert main(["recipe", "check", str(path), *sets]) == 0
    run = train(build_run(load_recipe(path, overrides), out_dir=tmp_path / "run"))
    assert run.step == 2 and run.latent is not None
    assert run.batches.dataset.mean.shape[1:] == (2, 4, 7, 7)  # both orientations (hflip)
    records = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"eval/class_fd"' in records


def test_the_two_fashion_stages_run_end_to_end_through_the_cli(tmp_path, monkeypatch, capsys):
    """Stage 1 (recipes/fashion-ae.toml) trained, then stage 2 (recipes/fashion-latent.toml)
    on that run, a few steps each on generated idx files, then sampled and edited with the
    commands of pixel space: the decoded samples are 28×28 images."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    fake_idx(tmp_path / "fashion", gz=True, n_train=8, n_test=6)
    recipes = Path(__file__).parents[1] / "recipes"
    data = f"data.root='{tmp_path / 'fashion'}'"
    stage1 = [*FEW_STEPS[:6], data, "lr_schedule.warmup_steps=1"]
    stage1 += ["autoencoder_training.disc_start=1", "autoencoder_training.calibration_images=4"]
    ae = tmp_path / "runs" / "fashion-ae"
    sets = [arg for override in stage1 for arg in ("--set", override)]
    assert main(["train", str(recipes / "fashion-ae.toml"), *sets, "--out", str(ae)]) == 0
    stage2 = [*FEW_STEPS, data, f"latent.autoencoder='{ae}'", "lr_schedule.warmup_steps=1"]
    stage2 += ["hooks.evaluate.num_samples=2", "hooks.evaluate.batch_size=2"]
    stage2 += ["metrics.class-quality.steps=3"]
    latent = tmp_path / "runs" / "fashion-latent"
    sets = [arg for override in stage2 for arg in ("--set", override)]
    assert main(["train", str(recipes / "fashion-latent.toml"), *sets, "--out", str(latent)]) == 0
    grid, out = tmp_path / "grid.png", tmp_path / "s.npz"
    assert main(["sample", str(latent), "-n", "4", "--grid", str(grid), "--out", str(out)]) == 0
    assert np.load(out)["arr_0"].shape == (4, 28, 28, 1)
    with Image.open(grid) as image:
        assert image.size[0] >= 2 * 28
    mask = np.zeros((28, 28), dtype=np.uint8)
    mask[:14] = 255  # regenerate the top half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    edited = tmp_path / "edited.npz"
    command = ["edit", str(latent), "--input", str(out), "--mask", str(tmp_path / "mask.png")]
    assert main([*command, "--out", str(edited)]) == 0
    before, after = np.load(out)["arr_0"], np.load(edited)["arr_0"]
    assert after.shape == before.shape
    assert np.array_equal(after[:, 14:], before[:, 14:])  # the kept half, exactly
    capsys.readouterr()


def test_cifar10_recipe_is_ho_et_al():
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "cifar10-ddpm.toml")
    unet = recipe.backbone.config
    assert (unet.channels, unet.channel_mults, unet.num_res_blocks) == (128, (1, 2, 2, 2), 2)
    assert (unet.attention_resolutions, unet.dropout) == ((16,), 0.1)
    assert recipe.schedule.type == "linear" and recipe.schedule.config.num_timesteps == 1000
    assert recipe.optimizer.config.lr == 2e-4 and recipe.train.batch_size == 128
    assert recipe.hooks["ema"].config.decay == 0.9999


FEW_STEPS = [
    "train.steps=2",
    "train.batch_size=2",
    "train.num_workers=0",
    "train.log_every=1",
    "hooks.checkpoint.every=2",
    "hooks.preview.every=2",
    "hooks.preview.num_images=2",
    "sampler.type=ddim",
    "sampler.steps=2",
]


@pytest.mark.parametrize(
    "width",
    [pytest.param(32, id="narrow"), pytest.param(128, id="full-35.7M", marks=pytest.mark.slow)],
)
def test_cifar10_recipe_runs_on_fake_cifar(tmp_path, monkeypatch, width):
    fake_cifar10(tmp_path / "cifar", monkeypatch)
    recipe = load_recipe(
        Path(__file__).parents[1] / "recipes" / "cifar10-ddpm.toml",
        [
            *FEW_STEPS,
            f"data.root='{tmp_path / 'cifar'}'",
            "data.download=false",
            f"backbone.channels={width}",
        ],
    )
    run = train(build_run(recipe, out_dir=tmp_path / "run"))
    assert run.step == 2
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_folder_recipe_runs_on_generated_images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        pixels = rng.integers(0, 256, size=(80, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    recipe = load_recipe(
        Path(__file__).parents[1] / "recipes" / "folder-64.toml",
        # a narrower U-Net keeps this CPU test short; the layout is the recipe's own
        [
            *FEW_STEPS,
            f"data.path='{folder}'",
            "backbone.channels=32",
            "backbone.head_channels=32",
            "lr_schedule.warmup_steps=1",
        ],
    )
    run = train(build_run(recipe, out_dir=tmp_path / "run"))
    assert run.step == 2
    assert run.image_shape == (3, 64, 64)


@pytest.mark.parametrize("name", ["fashion", "fashion-guided"])
def test_fashion_recipes_run_on_generated_idx_files(tmp_path, name):
    """The whole recipe, its end-of-training class-quality evaluation included, on a few
    generated images in the Debian package's layout (gzipped idx files in one folder)."""
    fake_idx(tmp_path / "fashion", gz=True, n_train=8, n_test=6)
    recipe = load_recipe(
        Path(__file__).parents[1] / "recipes" / f"{name}.toml",
        [
            *FEW_STEPS,
            f"data.root='{tmp_path / 'fashion'}'",
            "hooks.evaluate.num_samples=4",
            "hooks.evaluate.batch_size=4",
            "metrics.class-quality.steps=3",
            "lr_schedule.warmup_steps=1",
        ],
    )
    assert recipe.backbone.config.image_size == 28
    run = train(build_run(recipe, out_dir=tmp_path / "run"))
    assert run.step == 2
    records = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"eval/class_fd"' in records and '"eval/memorised"' in records


def test_fashion_ae_recipe_runs_on_generated_idx_files(tmp_path):
    """The autoencoder recipe (stage 1 of latent diffusion, docs/latent.md) a few steps on
    generated idx files: its discriminator on from step 1, calibration at the end."""
    fake_idx(tmp_path / "fashion", gz=True, n_train=8, n_test=6)
    recipe = load_recipe(
        Path(__file__).parents[1] / "recipes" / "fashion-ae.toml",
        [
            "train.steps=2",
            "train.batch_size=2",
            "train.log_every=1",
            "hooks.checkpoint.every=2",
            "hooks.preview.every=2",
            "hooks.preview.num_images=2",
            "autoencoder_training.disc_start=1",
            "autoencoder_training.calibration_images=4",
            "lr_schedule.warmup_steps=1",
            f"data.root='{tmp_path / 'fashion'}'",
        ],
    )
    assert recipe.trains_autoencoder
    run = train(build_run(recipe, out_dir=tmp_path / "run"))
    assert run.step == 2
    assert run.model.latent_shape((1, 28, 28)) == (4, 7, 7)  # 4× smaller per side
    records = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"disc_loss"' in records and '"latent_scale/3"' in records
    assert (tmp_path / "run" / "samples" / "step-00000002.png").is_file()
