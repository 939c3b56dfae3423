"""``denoisekit import-diffusers`` / ``export-diffusers`` and ``train.init_from``, through the
real command line, against diffusers itself (randomly initialised models saved with
``save_pretrained``: nothing is downloaded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from denoisekit import hookimpl
from denoisekit.cli import main
from denoisekit.engine.build import build_run, load_trained
from denoisekit.engine.loop import train
from denoisekit.engine.sampling import image_generators, sample_images
from denoisekit.host.recipe import load_recipe
from denoisekit.testing import write_recipe
from tests.plugins.test_unet_diffusers import LAYOUTS, max_forward_error, save_random_diffusers

diffusers = pytest.importorskip("diffusers", reason="diffusers (the bench extra) is not installed")

#: A 1×8×8 layout: the imported run's data is then the bundled digits (it can train).
DIGITS_LAYOUT = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4,
    "layers_per_block": 1,
    "freq_shift": 1,
    "flip_sin_to_cos": False,
}


def save_model(folder, layout, beta_schedule="linear", seed=0, **scheduler):
    """A random ``UNet2DModel`` and a ``DDPMScheduler`` config saved in ``folder``."""
    model = save_random_diffusers(layout, folder, seed=seed)
    diffusers.DDPMScheduler(beta_schedule=beta_schedule, **scheduler).save_pretrained(folder)
    return model


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("denoisekit: error: ") and "\n" not in err
    return err


@pytest.mark.parametrize(
    ("layout", "beta_schedule"),
    [("cifar10-small", "linear"), ("attention-free", "squaredcos_cap_v2")],
)
def test_imported_run_computes_what_diffusers_computes(layout, beta_schedule, tmp_path):
    theirs = save_model(tmp_path / "model", LAYOUTS[layout], beta_schedule)
    assert main(["import-diffusers", str(tmp_path / "model"), "--out", str(tmp_path / "run")]) == 0
    run = load_trained(tmp_path / "run", device="cpu")
    expected = {"linear": "linear", "squaredcos_cap_v2": "cosine"}[beta_schedule]
    assert run.recipe.schedule.type == expected
    assert run.loss.prediction_type == "eps"
    scheduler = diffusers.DDPMScheduler.from_pretrained(tmp_path / "model")
    ours_ab = run.schedule.alphas_cumprod.float()
    assert torch.allclose(ours_ab, scheduler.alphas_cumprod, rtol=1e-5, atol=1e-7)
    options = {k: v for k, v in run.recipe.to_dict()["backbone"].items() if k != "type"}
    sampling = run.pm.hook.denoisekit_sampling_model(run=run)  # the EMA weights
    for model in (run.model.eval(), sampling):
        err = max_forward_error(model, theirs, options)
        print(f"{layout}: max |ours - diffusers| = {err:.2e}")
        assert err < 1e-5


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The digits-sized layout imported: ``(diffusers model, run folder)``."""
    tmp = tmp_path_factory.mktemp("imported")
    theirs = save_model(tmp / "model", DIGITS_LAYOUT, "squaredcos_cap_v2")
    assert main(["import-diffusers", str(tmp / "model"), "--out", str(tmp / "run")]) == 0
    return theirs, tmp / "run"


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp-2m"])
def test_every_sampler_samples_an_imported_run(sampler, imported, tmp_path):
    out = tmp_path / "s.npz"
    argv = ["sample", str(imported[1]), "--sampler", sampler, "--set", "sampler.steps=4"]
    assert main([*argv, "-n", "3", "--out", str(out), "--device", "cpu"]) == 0
    images = np.load(out)["arr_0"]
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8


def test_a_pipeline_folder_with_bin_weights_and_its_scheduler_conventions(tmp_path):
    theirs = save_random_diffusers(LAYOUTS["attention-free"], tmp_path / "pipe" / "unet")
    (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    theirs.save_pretrained(tmp_path / "pipe" / "unet", safe_serialization=False)
    scheduler = diffusers.DDIMScheduler(
        beta_schedule="linear", timestep_spacing="trailing", clip_sample=False
    )
    scheduler.save_pretrained(tmp_path / "pipe" / "scheduler")
    assert main(["import-diffusers", str(tmp_path / "pipe"), "--out", str(tmp_path / "run")]) == 0
    run = load_trained(tmp_path / "run", device="cpu")
    assert run.recipe.sampler.type == "ddim"
    assert run.recipe.sampler.config.spacing == "trailing"
    assert run.recipe.sampler.config.clip_denoised is False
    options = {k: v for k, v in run.recipe.to_dict()["backbone"].items() if k != "type"}
    assert max_forward_error(run.model.eval(), theirs, options) < 1e-5


def test_an_unsupported_block_type_is_one_line_and_writes_nothing(tmp_path, capsys):
    save_model(tmp_path / "model", LAYOUTS["cifar10-small"])
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["down_block_types"][1] = "CrossAttnDownBlock2D"
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    argv = ["import-diffusers", str(tmp_path / "model"), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert "down_block_types[1] = 'CrossAttnDownBlock2D' is not supported" in err
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_replaced_only_with_overwrite(imported, tmp_path, capsys):
    model = imported[1].parent / "model"
    assert main(["import-diffusers", str(model), "--out", str(imported[1])]) == 2
    assert "already holds a run" in one_line_error(capsys)
    argv = ["import-diffusers", str(model), "--out", str(tmp_path / "again"), "--overwrite"]
    assert main(argv) == 0


# --------------------------------------------------------------------------- export


def ddim_loop(unet, scheduler, x_T: torch.Tensor, steps: int) -> torch.Tensor:
    """diffusers' DDIM at eta 0, as ``DDIMPipeline`` runs it (with the clipped eps)."""
    scheduler.set_timesteps(steps)
    x = x_T
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(x, t).sample
            x = scheduler.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    return x.clamp(-1.0, 1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained with EMA and checkpoints (freq_shift = 1: diffusers' rounding)."""
    tmp = tmp_path_factory.mktemp("trained")
    overrides = {
        "backbone": {"freq_shift": 1},
        "train": {"steps": 20},
        "hooks": {"ema": {"decay": 0.9}, "checkpoint": {"every": 20}},
    }
    path = write_recipe(tmp, overrides)
    assert main(["train", str(path), "--out", str(tmp / "run")]) == 0
    return tmp / "run"


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_exported_model_samples_what_denoisekit_samples(spacing, trained, tmp_path):
    out = tmp_path / "exported"
    argv = ["export-diffusers", str(trained), "--out", str(out)]
    assert main([*argv]) == 0
    steps = 5
    unet = diffusers.UNet2DModel.from_pretrained(out, subfolder="unet", local_files_only=True)
    unet.eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(
        out, subfolder="scheduler", local_files_only=True
    )
    scheduler.register_to_config(timestep_spacing=spacing)
    scheduler = diffusers.DDIMScheduler.from_config(scheduler.config)
    x_T = torch.stack([torch.randn(1, 8, 8, generator=g) for g in image_generators(0, 0, 4)])
    theirs = ddim_loop(unet, scheduler, x_T, steps)
    sets = [f"sampler.steps={steps}", "sampler.eta=0.0", f"sampler.spacing={spacing}"]
    run = load_trained(trained, device="cpu", overrides=sets)
    ours, _ = sample_images(run, 4, seed=0)
    err = (ours - theirs).abs().max().item()
    print(f"DDIM {spacing}: max |denoisekit - diffusers| = {err:.2e}")
    # Float32 tolerance: the two networks agree to ~1e-7, and the x0 estimate divides by
    # sqrt(alpha_bar_t): 5e-4 at t = T - 1 of this cosine schedule, where trailing spacing
    # starts (measured: leading 3e-7, trailing 1e-4).
    assert ours.abs().max() > 0.1 and err < (1e-5 if spacing == "leading" else 5e-4)
    # The command line draws the same images (uint8, so within one level).
    npz = tmp_path / "s.npz"
    sample = ["sample", str(trained), "-n", "4", "--out", str(npz), "--device", "cpu"]
    assert main([*sample, *(a for s in sets for a in ("--set", s))]) == 0
    quantized = ((theirs.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255)
    assert (np.load(npz)["arr_0"].astype(float) - quantized.numpy()).max() <= 1


def _cli_sample(run, tmp_path, sets: list[str]) -> np.ndarray:
    """``denoisekit sample RUN -n 4`` (seed 0) with ``--set``s: the uint8 images."""
    npz = tmp_path / "s.npz"
    sample = ["sample", str(run), "-n", "4", "--out", str(npz), "--device", "cpu"]
    assert main([*sample, *(a for s in sets for a in ("--set", s))]) == 0
    return np.load(npz)["arr_0"].astype(float)


def _to_uint8_levels(images_01: torch.Tensor) -> np.ndarray:
    """A pipeline's ``output_type="pt"`` images in [0, 1] as denoisekit's 8-bit levels."""
    return (images_01.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).numpy()


def test_exported_folder_is_a_ddim_pipeline_sampling_what_denoisekit_samples(trained, tmp_path):
    """``DDIMPipeline.from_pretrained(DIR)``, nothing assembled by hand; the pipeline drawn
    from the generators ``denoisekit sample`` seeds image by image gives its images."""
    out = tmp_path / "exported"
    assert main(["export-diffusers", str(trained), "--out", str(out)]) == 0
    pipe = diffusers.DDIMPipeline.from_pretrained(out, local_files_only=True)
    assert isinstance(pipe.scheduler, diffusers.DDIMScheduler)  # converted by the pipeline
    steps = 5
    with torch.no_grad():
        theirs = pipe(
            batch_size=4,
            generator=image_generators(0, 0, 4),  # the per-image seeds of `sample`
            num_inference_steps=steps,
            eta=0.0,
            use_clipped_model_output=True,
            output_type="pt",
        ).images
    sets = [f"sampler.steps={steps}", "sampler.eta=0.0"]
    ours, _ = sample_images(load_trained(trained, device="cpu", overrides=sets), 4, seed=0)
    err = (ours - (theirs * 2 - 1)).abs().max().item()
    print(f"DDIMPipeline: max |denoisekit - diffusers| = {err:.2e}")
    # The tolerance interop measures for leading spacing (test above): 1e-5.
    assert ours.abs().max() > 0.1 and err < 1e-5
    assert np.abs(_cli_sample(trained, tmp_path, sets) - _to_uint8_levels(theirs)).max() <= 1


def test_exported_folder_is_a_ddpm_pipeline_sampling_what_denoisekit_samples(trained, tmp_path):
    """``DDPMPipeline.from_pretrained(DIR)`` (what ``model_index.json`` names): ancestral
    sampling that draws, from the same per-image generators, what our ``ddpm`` sampler
    draws, its noise at every step included."""
    out = tmp_path / "exported"
    assert main(["export-diffusers", str(trained), "--out", str(out)]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    pipe = diffusers.DDPMPipeline.from_pretrained(out, local_files_only=True)
    assert isinstance(pipe.scheduler, diffusers.DDPMScheduler)
    assert isinstance(pipe, diffusers.DiffusionPipeline.from_pretrained(out).__class__)
    steps = 5
    with torch.no_grad():
        theirs = pipe(
            batch_size=4,
            generator=image_generators(0, 0, 4),
            num_inference_steps=steps,
            output_type="pt",
        ).images
    sets = ["sampler.type=ddpm", f"sampler.steps={steps}", "sampler.spacing=leading"]
    ours, _ = sample_images(load_trained(trained, device="cpu", overrides=sets), 4, seed=0)
    err = (ours - (theirs * 2 - 1)).abs().max().item()
    print(f"DDPMPipeline: max |denoisekit - diffusers| = {err:.2e}")
    assert ours.abs().max() > 0.1 and err < 1e-5
    assert np.abs(_cli_sample(trained, tmp_path, sets) - _to_uint8_levels(theirs)).max() <= 1


def test_export_replaces_an_older_flat_export_only_with_overwrite(trained, tmp_path, capsys):
    out = tmp_path / "x"
    out.mkdir()
    (out / "config.json").write_text("{}")  # 0.1's layout: the model beside the scheduler
    assert main(["export-diffusers", str(trained), "--out", str(out)]) == 2
    assert "config.json" in one_line_error(capsys)
    assert main(["export-diffusers", str(trained), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "config.json").exists() and (out / "unet" / "config.json").is_file()
    # ... and what it wrote imports back (the pipeline folder's unet/ and scheduler/).
    assert main(["import-diffusers", str(out), "--out", str(tmp_path / "back")]) == 0


def test_exported_scheduler_config_has_our_ddim_conventions(trained, tmp_path):
    assert main(["export-diffusers", str(trained), "--out", str(tmp_path / "x")]) == 0
    config = json.loads((tmp_path / "x" / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "DDPMScheduler"
    assert config["beta_schedule"] == "squaredcos_cap_v2" and config["num_train_timesteps"] == 100
    assert config["set_alpha_to_one"] is True and config["steps_offset"] == 0
    assert config["clip_sample"] is True and config["timestep_spacing"] == "leading"
    assert config["prediction_type"] == "epsilon"
    ddpm = diffusers.DDPMScheduler.from_pretrained(
        tmp_path / "x", subfolder="scheduler", local_files_only=True
    )
    assert ddpm.config.variance_type == "fixed_small"


def test_a_layout_diffusers_cannot_express_is_one_line(tmp_path, capsys):
    overrides = {"backbone": {"time_input": "log_snr"}, "hooks": {"checkpoint": {}}}
    path = write_recipe(tmp_path, {**overrides, "train": {"steps": 1}})
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    argv = ["export-diffusers", str(tmp_path / "run"), "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "time_input = 'log_snr' is not supported" in one_line_error(capsys)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- init_from


class WeightsAtStart:
    """Records the trained and sampling weights when the loop starts (after init_from)."""

    @staticmethod
    def _copy(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    @hookimpl
    def denoisekit_train_start(self, run):
        self.model = self._copy(run.model)
        self.sampling = self._copy(run.pm.hook.denoisekit_sampling_model(run=run))
        self.step = run.step


def fine_tune_recipe(folder, run_dir, **train):
    """A digits recipe with the imported run's tables and ``train.init_from``."""
    stored = load_trained(run_dir, device="cpu").recipe.to_dict()
    tables = {k: stored[k] for k in ("backbone", "schedule", "loss")}
    overrides = {**tables, "train": {"steps": 2, "init_from": str(run_dir), **train}}
    hooks = {"ema": {}, "checkpoint": {}}
    return write_recipe(folder, {**overrides, "hooks": hooks}, name="finetune")


def test_fine_tuning_starts_from_the_imported_weights(imported, tmp_path):
    run_dir = imported[1]
    path = fine_tune_recipe(tmp_path, run_dir)
    probe = WeightsAtStart()
    run = build_run(load_recipe(path), out_dir=tmp_path / "ft", extra_hooks=[probe])
    train(run)
    imported_state = load_trained(run_dir, device="cpu").model.state_dict()
    assert probe.step == 0 and probe.model.keys() == imported_state.keys()
    for key, value in imported_state.items():
        assert torch.equal(probe.model[key], value), key
        assert torch.equal(probe.sampling[key], value), key
    assert run.step == 2
    assert any(not torch.equal(run.model.state_dict()[k], v) for k, v in imported_state.items())
    # And through the command line, into a run that samples.
    assert main(["train", str(path), "--out", str(tmp_path / "cli")]) == 0
    assert main(["sample", str(tmp_path / "cli"), "-n", "2", "--out", str(tmp_path / "s.npz")]) == 0


def test_init_from_weights_of_another_backbone_is_one_line(imported, tmp_path, capsys):
    path = fine_tune_recipe(tmp_path, imported[1])
    argv = ["train", str(path), "--out", str(tmp_path / "ft"), "--set", "backbone.channels=16"]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert "last.pt: the weights do not fit this recipe's backbone" in err


def test_checkpoints_as_safetensors_and_init_from_them(tmp_path):
    from safetensors.torch import load_file

    hooks = {"ema": {"decay": 0.5}, "checkpoint": {"every": 2, "keep": 1, "safetensors": True}}
    path = write_recipe(tmp_path, {"hooks": hooks, "train": {"steps": 4}})
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [
        "last.pt", "step-00000004.pt", "step-00000004.safetensors"
    ]  # fmt: skip
    tensors = load_file(folder / "step-00000004.safetensors")
    state = torch.load(folder / "last.pt", weights_only=True)
    for key, value in state["model"].items():
        assert torch.equal(tensors[f"model.{key}"], value)
        assert torch.equal(tensors[f"ema.{key}"], state["hooks"]["ema"]["model"][key])
    assert not torch.equal(tensors["ema.conv_out.weight"], tensors["model.conv_out.weight"])
    start = {"train": {"steps": 1, "init_from": "run/checkpoints/step-00000004.safetensors"}}
    probe = WeightsAtStart()
    again = write_recipe(tmp_path, {**start, "hooks": {"ema": {}}}, name="again")
    train(build_run(load_recipe(again), out_dir=tmp_path / "again", extra_hooks=[probe]))
    for key, value in state["model"].items():
        assert torch.equal(probe.model[key], value)
        assert torch.equal(probe.sampling[key], state["hooks"]["ema"]["model"][key])


def test_an_inpainting_run_exports_a_2c_plus_1_channel_unet_and_its_channel_order(tmp_path):
    """No pipeline (none samples a pixel-space inpainting UNet): ``unet/`` loads as a
    ``UNet2DModel`` with ``in_channels = 2C + 1`` that computes what our model computes on
    the input ``inpainting.json`` describes."""
    from denoisekit.engine.inpainting import ConditionedModel
    from denoisekit.engine.masks import make_mask

    overrides = {
        "backbone": {"freq_shift": 1, "in_channels": 3, "out_channels": 1},
        "inpainting": {"masks": ["top", "pixels"]},
        "train": {"steps": 4},
        "hooks": {"ema": {"decay": 0.5}, "checkpoint": {"every": 4}},
    }
    path = write_recipe(tmp_path, overrides)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    out = tmp_path / "exported"
    assert main(["export-diffusers", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert not (out / "model_index.json").exists()
    layout = json.loads((out / "inpainting.json").read_text())
    assert [(i["name"], i["channels"]) for i in layout["inputs"]] == [
        ("x_t", 1),
        ("masked_image", 1),
        ("mask", 1),
    ]
    assert layout["in_channels"] == 3 and layout["trained_masks"] == ["top", "pixels"]
    unet = diffusers.UNet2DModel.from_pretrained(out, subfolder="unet", local_files_only=True)
    assert (unet.config.in_channels, unet.config.out_channels) == (3, 1)
    g = torch.Generator().manual_seed(0)
    known = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    mask = make_mask("pixels", 4, 8, seed=3)
    x_t = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 30, 60, 99])
    run = load_trained(tmp_path / "run", device="cpu")
    inputs = torch.cat([x_t, known * (1 - mask), mask], dim=1)  # as inpainting.json says
    with torch.no_grad():
        ours = ConditionedModel(run.sampling_denoiser().model.model, known, mask)(x_t, t)
        theirs = unet(inputs, t).sample
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
