"""Autoencoder recipes trained by ``denoisekit train`` (issue 22, stage 1; docs/latent.md):
the recipe and its checks, the loop (loss, discriminator switch, exact resume), calibration
at the end, the run folder as stage 2 reads it, and AutoencoderKL folders in and out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from denoisekit import hookimpl
from denoisekit.cli import main
from denoisekit.engine.autoencoder_run import NOT_DIFFUSION, AutoencoderRun, calibration_images
from denoisekit.engine.build import build_run, load_trained
from denoisekit.engine.checkpoint import load_checkpoint
from denoisekit.engine.latents import normalize_latents
from denoisekit.engine.loop import train
from denoisekit.engine.run_folder import open_run
from denoisekit.errors import DenoisekitError, RecipeError
from denoisekit.files import RunPaths
from denoisekit.host.recipe import load_recipe, recipe_from_data
from denoisekit.host.registry import load_registry
from denoisekit.testing.recipes import write_recipe

TINY_KL = {
    "type": "kl",
    "in_channels": 1,
    "block_channels": [8, 16],  # 8×8 digits → 2×4×4 latents
    "num_res_blocks": 1,
    "latent_channels": 2,
    "groups": 4,
}

#: An autoencoder recipe on the bundled 8×8 digits: a second or two per test.
TINY_AE = {
    "name": "tiny-ae",
    "seed": 0,
    "data": {"type": "digits"},
    "autoencoder": TINY_KL,
    "autoencoder_training": {"calibration_images": 64},
    "optimizer": {"type": "adamw", "lr": 3e-3},
    "train": {"steps": 6, "batch_size": 8, "device": "cpu", "log_every": 1},
}
DISCRIMINATOR = {"discriminator": True, "disc_start": 3, "disc_layers": 1, "disc_channels": 8}


def ae_recipe(folder: Path, extra: dict | None = None, *, name: str = "tiny-ae") -> Path:
    """Write :data:`TINY_AE` (tables merged with ``extra``) to ``folder/<name>.toml``."""
    import tomli_w

    from denoisekit.host.recipe import deep_merge

    data = deep_merge(json.loads(json.dumps(TINY_AE)), {"name": name, **(extra or {})})
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def _trained(tmp_path: Path, extra: dict | None = None, name: str = "run") -> AutoencoderRun:
    recipe = load_recipe(ae_recipe(tmp_path, extra))
    run = build_run(recipe, out_dir=tmp_path / name)
    train(run)
    return run


def _metrics(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


# --------------------------------------------------------------------------- the recipe


def test_an_autoencoder_recipe_has_no_diffusion_parts(tmp_path):
    recipe = load_recipe(ae_recipe(tmp_path, {"autoencoder_training": DISCRIMINATOR}))
    assert recipe.trains_autoencoder
    assert (recipe.schedule, recipe.backbone, recipe.loss, recipe.sampler) == (None,) * 4
    assert recipe.autoencoder_training.disc_start == 3
    data = recipe.to_dict()
    assert {"autoencoder", "autoencoder_training", "train", "optimizer"} <= set(data)
    assert not {"schedule", "backbone", "loss", "sampler", "guidance", "inpainting"} & set(data)
    again = tmp_path / "again.toml"
    again.write_text(recipe.to_toml(), encoding="utf-8")
    assert load_recipe(again) == recipe
    assert main(["recipe", "check", str(again)]) == 0


def test_a_diffusion_recipe_is_resolved_as_before(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path))
    assert not recipe.trains_autoencoder
    assert "autoencoder_training" not in recipe.to_dict()  # the stored recipe is unchanged
    assert {"guidance", "inpainting"} <= set(recipe.to_dict())
    run = build_run(recipe, out_dir=tmp_path / "run")
    assert type(run).__name__ == "Run" and run.sampler is not None


BAD = {
    "kl-weight": ({"autoencoder_training": {"kl_weight": -1.0}}, "autoencoder_training.kl_weight"),
    "reconstruction": (
        {"autoencoder_training": {"reconstruction": "l2"}},
        "autoencoder_training.reconstruction",
    ),
    "disc-start": (
        {"autoencoder_training": {**DISCRIMINATOR, "disc_start": 6}},
        "autoencoder_training.disc_start: 6 is not below train.steps = 6",
    ),
    "disc-layers": (
        {"autoencoder_training": {**DISCRIMINATOR, "disc_layers": 2}},
        "autoencoder_training.disc_layers: 2 stride-2 layers leave no patch of the data's 8×8",
    ),
    "sampler": ({"sampler": {"type": "ddim"}}, "sampler: an autoencoder recipe"),
    "guidance": ({"guidance": {"scale": 1.0}}, "guidance: an autoencoder recipe"),
    "metrics": ({"metrics": {"fd": {}}}, "metrics.fd: an autoencoder run draws no samples"),
    "evaluate": ({"hooks": {"evaluate": {}}}, "hooks.evaluate: an autoencoder run draws no"),
    "label-dropout": ({"train": {"label_dropout": 0.1}}, "train.label_dropout: an autoencoder"),
    "factor": (
        {"autoencoder": {"block_channels": [8, 8, 8, 8, 8]}},
        "autoencoder.block_channels: 5 levels downsample by 16",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_autoencoder_options_are_one_line_at_recipe_check(tmp_path, capsys, case):
    extra, expected = BAD[case]
    path = ae_recipe(tmp_path, extra)
    assert main(["recipe", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and expected in err


def test_autoencoder_training_in_a_diffusion_recipe_is_one_line(tmp_path):
    path = write_recipe(tmp_path, {"autoencoder_training": {"kl_weight": 1e-6}})
    with pytest.raises(RecipeError, match=r"autoencoder_training: only an autoencoder recipe"):
        load_recipe(path)


# --------------------------------------------------------------------------- training


def test_training_lowers_the_loss_and_writes_a_run_folder(tmp_path):
    extra = {
        "train": {"steps": 40, "log_every": 5},
        "hooks": {"ema": {"decay": 0.9}, "checkpoint": {"every": 20}, "preview": {"every": 20,
                  "num_images": 4}, "tensorboard": {}},
    }  # fmt: skip
    run = _trained(tmp_path, extra)
    assert isinstance(run, AutoencoderRun) and run.step == 40
    records = [r for r in _metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in records] == list(range(5, 41, 5))
    assert records[-1]["loss"] < 0.75 * records[0]["loss"]  # 40 steps of a tiny model
    assert records[-1]["reconstruction"] < records[0]["reconstruction"]
    assert all(r["kl"] > 0 for r in records)
    paths = RunPaths(tmp_path / "run")
    assert paths.last_checkpoint.is_file() and (paths.checkpoints / "step-00000020.pt").is_file()
    assert (paths.recipe.read_text() == run.recipe.to_toml()) and any(paths.tensorboard.iterdir())
    from PIL import Image

    grid = Image.open(paths.samples / "step-00000040.png")  # 4 (image, reconstruction) pairs
    assert grid.size == (2 + 4 * (8 + 2), 2 + 2 * (8 + 2))  # 4 columns (2 pairs), 2 rows


def test_the_discriminator_switches_on_at_disc_start(tmp_path):
    recipe = load_recipe(ae_recipe(tmp_path, {"autoencoder_training": DISCRIMINATOR}))
    fresh = build_run(recipe, out_dir=tmp_path / "fresh")
    initial = {k: v.clone() for k, v in fresh.discriminator.state_dict().items()}
    run = build_run(recipe, out_dir=tmp_path / "run", extra_hooks=[_DiscriminatorSpy()])
    train(run)
    spy = run.pm.get_plugin("extra:0")
    # Steps 1-3 (disc_start = 3 steps taken before) leave it as initialised; 4-6 train it.
    assert all(spy.unchanged_after[s] for s in (1, 2, 3))
    assert not any(spy.unchanged_after[s] for s in (4, 5, 6))
    assert all(torch.equal(spy.first[k], initial[k]) for k in initial)
    records = [r for r in _metrics(tmp_path / "run") if "loss" in r]
    assert [("disc_loss" in r) for r in records] == [False] * 3 + [True] * 3
    assert all(r["disc_weight"] > 0 and "g_loss" in r for r in records[3:])


class _DiscriminatorSpy:
    """Records, after every step, whether the discriminator's weights are those at the start."""

    def __init__(self):
        self.first = None
        self.unchanged_after = {}

    @hookimpl
    def denoisekit_train_start(self, run):
        self.first = {k: v.clone() for k, v in run.discriminator.state_dict().items()}

    @hookimpl
    def denoisekit_train_step_end(self, run, step):
        now = run.discriminator.state_dict()
        self.unchanged_after[step] = all(torch.equal(now[k], self.first[k]) for k in self.first)


def test_resume_is_bit_exact_with_the_discriminator_and_ema(tmp_path):
    extra = {
        "autoencoder_training": DISCRIMINATOR,
        "hooks": {"ema": {"decay": 0.9}, "checkpoint": {"every": 2}},
    }
    recipe_path = ae_recipe(tmp_path, extra)
    straight = build_run(load_recipe(recipe_path), out_dir=tmp_path / "a")
    train(straight)
    # Resume from the step-2 checkpoint (before the discriminator starts) into a new folder.
    state = load_checkpoint(tmp_path / "a" / "checkpoints" / "step-00000002.pt")
    torch.manual_seed(12345)  # disturb the global RNG: resume must restore it
    resumed = build_run(load_recipe(recipe_path), out_dir=tmp_path / "b")
    resumed.load_state_dict(state)
    assert resumed.step == 2
    train(resumed)
    a, b = straight.state_dict(), resumed.state_dict()
    for part in ("model", "discriminator", "optimizer"):
        flat_a, flat_b = _flatten(a[part]), _flatten(b[part])
        assert flat_a and flat_a.keys() == flat_b.keys()
        assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), part
    assert "optimizer.state.0.exp_avg" in _flatten(a["discriminator"])
    ema_a, ema_b = a["hooks"]["ema"]["model"], b["hooks"]["ema"]["model"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def _flatten(tree, prefix=""):
    out = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        if isinstance(value, dict | list):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            out[f"{prefix}{key}"] = value
    return out


# --------------------------------------------------------------------------- calibration


def test_calibration_is_stored_and_gives_unit_variance(tmp_path):
    run = _trained(tmp_path, {"hooks": {"ema": {"decay": 0.9}, "checkpoint": {"every": 6}}})
    state = load_checkpoint(RunPaths(tmp_path / "run").last_checkpoint)
    ema = state["hooks"]["ema"]["model"]
    assert not torch.equal(ema["scale"], torch.ones(2)) and not torch.equal(
        ema["shift"], torch.zeros(2)
    )
    assert torch.equal(state["model"]["shift"], ema["shift"])  # both weights carry it
    assert torch.equal(state["model"]["scale"], ema["scale"])
    # Over the calibration images, the normalized posterior has per channel mean 0 and, by
    # the law of total variance (E[var] + Var[mean]), variance 1: exactly (float64 sums).
    model = run.sampling_model()
    images = torch.cat(calibration_images(run, 64))
    assert len(images) == 64
    with torch.no_grad():
        dist = model.eval().encode(images)
    scale = model.scale.double().view(1, -1, 1, 1)
    mean = normalize_latents(model, dist.mean).double()
    var = dist.logvar.double().exp() * scale**2
    channel_mean = mean.mean(dim=(0, 2, 3))
    channel_var = (mean.square() + var).mean(dim=(0, 2, 3)) - channel_mean.square()
    assert torch.allclose(channel_mean, torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(channel_var, torch.ones(2, dtype=torch.float64), atol=1e-4)
    # And the latents drawn from it: 64 images × 16 values a channel, within sampling error.
    z = normalize_latents(model, dist.sample(torch.Generator().manual_seed(1)))
    # (about 3 standard errors, counting each image's values as one: they are correlated)
    assert z.mean(dim=(0, 2, 3)).abs().max() < 0.4
    assert (z.var(dim=(0, 2, 3)) - 1).abs().max() < 0.55
    record = next(r for r in _metrics(tmp_path / "run") if "calibration_images" in r)
    assert record["step"] == 6 and record["calibration_images"] == 64
    assert record["latent_scale/1"] == pytest.approx(float(ema["scale"][1]), rel=1e-6)


def test_calibration_posterior_mode_and_off(tmp_path):
    mode = _trained(tmp_path, {"autoencoder_training": {"calibration_posterior": "mode"}})
    model = mode.sampling_model()
    with torch.no_grad():
        means = model.eval().encode(torch.cat(calibration_images(mode, 64))).mean.double()
    normalized = (means - model.shift.double().view(1, -1, 1, 1)) * model.scale.double().view(
        1, -1, 1, 1
    )
    variance = normalized.var(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(variance, torch.ones(2).double(), atol=1e-4)
    off = _trained(tmp_path, {"autoencoder_training": {"calibration_images": 0}}, name="off")
    assert torch.equal(off.model.scale, torch.ones(2))
    assert not any("calibration_images" in r for r in _metrics(tmp_path / "off"))


# --------------------------------------------------------------------------- stage 2's view


def test_stage_two_reads_the_calibrated_autoencoder_from_the_run_folder(tmp_path):
    run = _trained(tmp_path, {"hooks": {"ema": {"decay": 0.9}, "checkpoint": {"every": 6}}})
    stored = open_run(tmp_path / "run")
    recipe = stored.recipe()
    assert recipe.trains_autoencoder
    choice = recipe.autoencoder
    autoencoder = stored.registry.build("autoencoder", choice.type, choice.config)
    autoencoder.load_state_dict(stored.load_state()["hooks"]["ema"]["model"])
    expected = run.sampling_model().state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in autoencoder.state_dict().items())
    assert not torch.equal(autoencoder.scale, torch.ones(2))
    assert autoencoder.latent_shape((1, 8, 8)) == (2, 4, 4)
    # What export-diffusers reads: the sampling weights of load_trained, only when asked.
    loaded = load_trained(stored, device="cpu", allow_autoencoder=True)
    sampling = loaded.pm.hook.denoisekit_sampling_model(run=loaded)
    assert all(torch.equal(v, expected[k]) for k, v in sampling.state_dict().items())
    with pytest.raises(DenoisekitError, match="this is an autoencoder run"):
        load_trained(stored)


def test_sampling_commands_refuse_an_autoencoder_run_in_one_line(tmp_path, capsys):
    _trained(tmp_path, {"hooks": {"checkpoint": {"every": 6}}})
    folder = str(tmp_path / "run")
    for argv in (
        ["sample", folder, "-n", "2", "--out", str(tmp_path / "s.npz")],
        ["eval", folder, "--metric", "fd"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and NOT_DIFFUSION in err


def test_train_command_prints_the_calibration(tmp_path, capsys):
    path = ae_recipe(tmp_path, {"hooks": {"checkpoint": {"every": 6}}})
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "trained 6 steps" in out and "latent calibration (in the checkpoint): shift [" in out


# --------------------------------------------------------------------------- AutoencoderKL


def test_export_and_import_round_trip_through_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    run = _trained(tmp_path, {"hooks": {"ema": {"decay": 0.9}, "checkpoint": {"every": 6}}})
    ours = run.sampling_model().eval()
    assert main(["export-diffusers", str(tmp_path / "run"), "--out", str(tmp_path / "vae")]) == 0
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL" and config["sample_size"] == 8
    theirs = diffusers.AutoencoderKL.from_pretrained(tmp_path / "vae").eval()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        mine, dist = ours.encode(x), theirs.encode(x).latent_dist
        assert torch.allclose(mine.mean, dist.mean, atol=1e-5)
        assert torch.allclose(mine.logvar, dist.logvar, atol=1e-5)
        assert torch.allclose(ours.decode(mine.mean), theirs.decode(dist.mean).sample, atol=1e-5)
    # The calibration travels as latents_mean / latents_std (per channel, scaling_factor 1).
    assert config["scaling_factor"] == 1.0
    mean, std = (
        torch.tensor(config[k], dtype=torch.float64) for k in ("latents_mean", "latents_std")
    )
    assert torch.allclose(mean, ours.shift.double(), atol=1e-7)
    assert torch.allclose(1 / std, ours.scale.double(), rtol=1e-6)

    # ... and back: import-diffusers makes an autoencoder run of the folder.
    assert main(["import-diffusers", str(tmp_path / "vae"), "--out", str(tmp_path / "back")]) == 0
    back = load_trained(tmp_path / "back", device="cpu", allow_autoencoder=True)
    assert back.recipe.trains_autoencoder and back.recipe.autoencoder.config.block_channels == (
        8,
        16,
    )
    again = back.pm.hook.denoisekit_sampling_model(run=back).eval()
    assert all(torch.allclose(v, ours.state_dict()[k]) for k, v in again.state_dict().items())
    with torch.no_grad():
        assert torch.allclose(again.decode(again.encode(x).mean), theirs.decode(dist.mean).sample,
                              atol=1e-5)  # fmt: skip
    # The imported run trains on: its recipe is an autoencoder recipe (placeholder data).
    recipe = load_recipe(RunPaths(tmp_path / "back").recipe)
    assert recipe.trains_autoencoder and recipe.data.type == "digits"


def test_import_refuses_to_overwrite_a_run_without_the_flag(tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], layers_per_block=1,
        latent_channels=2, norm_num_groups=4, sample_size=16,
    )  # fmt: skip
    model.save_pretrained(tmp_path / "vae")
    assert main(["import-diffusers", str(tmp_path / "vae"), "--out", str(tmp_path / "r")]) == 0
    recipe = recipe_from_data(
        __import__("tomllib").loads(RunPaths(tmp_path / "r").recipe.read_text()),
        load_registry(),
        check=False,
    )
    assert recipe.data.type == "image-folder" and recipe.data.config.image_size == 16
    assert main(["import-diffusers", str(tmp_path / "vae"), "--out", str(tmp_path / "r")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_the_latent_guide_stage_two_example_runs(tmp_path, monkeypatch):
    import re

    text = (Path(__file__).parents[1] / "docs" / "latent.md").read_text(encoding="utf-8")
    [block] = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "open_run" in b]
    run = _trained(tmp_path, {"hooks": {"ema": {"decay": 0.9}, "checkpoint": {"every": 6}}},
                   name="runs/fashion-ae")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "docs/latent.md", "exec"), namespace)
    expected = run.sampling_model().state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in namespace["vae"].state_dict().items())


# --------------------------------------------------------------------------- the discriminator


@pytest.mark.parametrize(("side", "layers"), [(8, 1), (28, 2), (28, 3), (32, 3), (64, 4)])
def test_patch_discriminator_gives_one_logit_per_patch(side, layers):
    from denoisekit.engine.patch_gan import PatchDiscriminator

    disc = PatchDiscriminator(3, channels=4, layers=layers)
    out = disc(torch.randn(2, 3, side, side))
    assert out.shape == (2, 1, side // 2**layers - 2, side // 2**layers - 2)  # the check's rule
    strided = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == layers


def test_hinge_loss_and_adaptive_weight_closed_forms():
    from denoisekit.engine.patch_gan import adaptive_weight, hinge_discriminator_loss

    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 0.5])
    # relu(1 - real) = [0, 0.5, 2] (mean 5/6); relu(1 + fake) = [0, 1, 1.5] (mean 5/6)
    assert float(hinge_discriminator_loss(real, fake)) == pytest.approx(0.5 * (5 / 6 + 5 / 6))
    x = torch.randn(4, requires_grad=True)
    a, b = torch.tensor([3.0, 0.0, 4.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0])
    weight = adaptive_weight((a * x).sum(), (b * x).sum(), x)  # gradients a and b
    assert float(weight) == pytest.approx(5.0 / (1.0 + 1e-4))
    assert float(adaptive_weight((1e6 * a * x).sum(), (0 * b * x).sum(), x)) == 1e4  # clamped
