"""Bad input found by trying the commands as a new user (issue 19): each ends in one line
naming the flag, key or file, exit status 2, before any work starts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from denoisekit.cli import main
from denoisekit.engine.weights_fit import misfit
from denoisekit.testing import train_tiny, write_recipe
from tests.core.test_error_lines import error_line

CLASSES = {"backbone": {"num_classes": 10}, "train": {"label_dropout": 0.1}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained tiny run and a class-conditional one: ``(folder, plain, classes)``."""
    folder = tmp_path_factory.mktemp("bad-inputs")
    hooks = {"hooks": {"checkpoint": {"every": 2}}}
    plain = train_tiny(write_recipe(folder, hooks), out_dir=folder / "plain")
    classes = write_recipe(folder, {**hooks, **CLASSES}, name="classes")
    conditional = train_tiny(classes, out_dir=folder / "classes")
    return folder, plain.out_dir, conditional.out_dir


# ----------------------------------------------------------------------- non-finite numbers


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_guidance_flag_must_be_finite(value, runs, tmp_path, capsys):
    _, _, classes = runs
    out = tmp_path / "s.npz"
    argv = ["sample", str(classes), "-n", "2", f"--guidance={value}", "--out", str(out)]
    line = error_line(argv, capsys)
    assert f"argument --guidance: must be a finite number: '{value}'" in line
    assert not out.exists()


def test_strength_flag_must_be_finite(runs, tmp_path, capsys):
    _, plain, _ = runs
    argv = ["edit", str(plain), "--input", str(tmp_path), "--strength", "inf"]
    assert "argument --strength: must be a finite number: 'inf'" in error_line(argv, capsys)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("guidance.scale", "inf", "'scale' must be a finite number >= 0: inf"),
        ("guidance.scale", "nan", "'scale' must be a finite number >= 0: nan"),
        ("sampler.lambda_min", "nan", "'lambda_min' must be a finite number or -inf: nan"),
        ("sampler.lambda_min", "inf", "'lambda_min' must be a finite number or -inf: inf"),
        ("backbone.log_snr_scale", "inf", "'log_snr_scale' must be a finite number > 0: inf"),
    ],
)
def test_recipe_check_refuses_non_finite_options(key, value, message, tmp_path, capsys):
    path = write_recipe(tmp_path, {**CLASSES, "sampler": {"type": "dpmpp-2m"}})
    line = error_line(["recipe", "check", str(path), "--set", f"{key}={value}"], capsys)
    assert line == f"denoisekit: error: {path}: {key}: {message} (set by --set)"


def test_lambda_min_minus_infinity_means_no_clipping(runs, tmp_path, capsys):
    """-inf is diffusers' lambda_min_clipped default: the grid starts at lambda_{T-1}."""
    from denoisekit.plugins.samplers.dpmpp_2m import DPMSolverConfig, DPMSolverSampler

    ab = np.linspace(0.999, 1e-4, 100)
    unclipped = DPMSolverSampler(DPMSolverConfig(lambda_min=-float("inf"))).timesteps(ab)
    assert unclipped == DPMSolverSampler(DPMSolverConfig(lambda_min=-1e9)).timesteps(ab)
    _, plain, _ = runs
    argv = ["sample", str(plain), "-n", "2", "--sampler", "dpmpp-2m"]
    out = tmp_path / "s.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's RuntimeWarnings on a grid from +inf
        assert main([*argv, "--set", "sampler.lambda_min=-inf", "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ weights that do not fit


def test_weights_that_do_not_fit_name_the_tensor_and_both_shapes(runs, tmp_path, capsys):
    _, plain, _ = runs
    path = write_recipe(tmp_path, {"train": {"init_from": str(plain)}}, name="ft")
    argv = ["train", str(path), "--out", str(tmp_path / "ft"), "--set", "backbone.channels=16"]
    line = error_line(argv, capsys)
    assert line == (
        f"denoisekit: error: {plain / 'checkpoints' / 'last.pt'}: the weights do not fit this "
        "recipe's backbone: time_mlp.0.weight is 32×8 in the file but 64×16 in this backbone; "
        "the recipe must describe the network the weights were trained with"
    )
    assert not (tmp_path / "ft" / "checkpoints").exists()


def test_sampling_a_checkpoint_with_another_backbone_names_the_tensor(runs, tmp_path, capsys):
    _, plain, _ = runs
    checkpoint = plain / "checkpoints" / "last.pt"
    argv = ["sample", str(checkpoint), "-n", "2", "--out", str(tmp_path / "s.npz")]
    line = error_line([*argv, "--set", "backbone.num_res_blocks=2"], capsys)
    assert f"{checkpoint}: the weights do not fit this recipe's backbone: " in line
    assert "tensors missing from the file (" in line and "unexpected in it (" in line


def test_misfit_lists_missing_and_unexpected_keys():
    module = torch.nn.Linear(2, 3)
    assert misfit(module, module.state_dict()) is None
    assert misfit(module, {"weight": torch.zeros(3, 2)}) == (
        "1 tensors missing from the file ('bias')"
    )
    extra = {**module.state_dict(), "scale": torch.zeros(()), "shift": torch.zeros(())}
    assert misfit(module, extra) == "2 unexpected in it ('scale' and 1 more)"
    wrong = {"weight": torch.zeros(3, 4), "bias": torch.zeros(3)}
    assert misfit(module, wrong) == "weight is 3×4 in the file but 3×2 in this backbone"


# ------------------------------------------------------------------------- edit: strength, inputs


@pytest.fixture
def inputs(tmp_path):
    """``.npz`` inputs: 8×8 grey (the model's), 8×8 RGB and 16×16 grey."""
    rng = np.random.default_rng(0)
    paths = {}
    for name, shape in {"fit": (3, 8, 8, 1), "rgb": (3, 8, 8, 3), "big": (3, 16, 16, 1)}.items():
        paths[name] = tmp_path / f"{name}.npz"
        np.savez(paths[name], rng.integers(0, 256, shape, dtype=np.uint8))
    return paths


@pytest.mark.parametrize(("strength", "sampler"), [("0.1", "dpmpp-2m"), ("0.03", "ddim")])
def test_a_low_strength_samples_over_the_timesteps_left_and_says_so(
    strength, sampler, runs, inputs, tmp_path, capsys
):
    _, plain, _ = runs
    out = tmp_path / "out.npz"
    argv = ["edit", str(plain), "--input", str(inputs["fit"]), "--strength", strength]
    assert main([*argv, "--sampler", sampler, "--out", str(out)]) == 0
    left = round(float(strength) * 100)
    default = {"dpmpp-2m": 20, "ddim": 5}[sampler]  # dpmpp-2m's default; the tiny recipe's ddim
    assert (
        f"note: --strength {strength} leaves {left} of the schedule's 100 timesteps: sampler "
        f"{sampler} takes {left} steps instead of {default}"
    ) in capsys.readouterr().out
    assert np.load(out)["arr_0"].shape == (3, 8, 8, 1)


def test_fit_to_timesteps_gives_the_sampler_of_the_steps_left(runs):
    from denoisekit.engine.build import load_trained
    from denoisekit.engine.editing import EditOptions, fit_to_timesteps

    _, plain, _ = runs
    run = load_trained(plain, overrides=["sampler.type='dpmpp-2m'"], device="cpu")
    sampler, options, notes = fit_to_timesteps(run, EditOptions(strength=0.1))
    assert sampler.config.steps == 10 and len(notes) == 1
    assert sampler.timesteps(run.schedule.alphas_cumprod[:10].numpy())[0] == 9
    assert fit_to_timesteps(run, EditOptions(strength=0.2))[0] is run.sampler  # 20 left: as is
    _, options, notes = fit_to_timesteps(run, EditOptions(strength=0.05, repaint=(20, 3, 2)))
    assert options.repaint == (5, 3, 2) and "RePaint takes 5 steps instead of 20" in notes[0]


def test_a_strength_too_low_for_the_sampler_names_the_lowest_it_can_take(
    runs, inputs, tmp_path, capsys
):
    _, plain, _ = runs
    out = tmp_path / "out.npz"
    argv = ["edit", str(plain), "--input", str(inputs["fit"]), "--strength", "0.01"]
    line = error_line([*argv, "--sampler", "dpmpp-2m", "--out", str(out)], capsys)
    assert line == (
        "denoisekit: error: --strength 0.01 leaves 1 of the schedule's 100 timesteps, fewer "
        "than the 2 steps sampler dpmpp-2m takes at least; use --strength 0.02 or more, or "
        "another --sampler"
    )
    assert not out.exists()


def test_repaint_steps_beyond_the_schedule_take_its_timesteps(runs, inputs, tmp_path, capsys):
    _, plain, _ = runs
    np.save(tmp_path / "top.npy", np.r_[np.ones((4, 8)), np.zeros((4, 8))])
    argv = ["edit", str(plain), "--input", str(inputs["fit"]), "--mask", str(tmp_path / "top.npy")]
    assert main([*argv, "--repaint", "250", "50", "1", "--out", str(tmp_path / "o.npz")]) == 0
    assert "RePaint takes 100 steps instead of 250" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "rgb",
            "arr_0 holds 3-channel images but the model makes 1-channel ones; convert them to "
            "grey levels (image files given instead are converted)",
        ),
        (
            "big",
            "arr_0 holds 16×16 images but the model makes 8×8 ones; resize them to 8×8 (image "
            "files given instead are resized)",
        ),
    ],
)
def test_npz_inputs_that_do_not_fit_name_the_file(name, message, runs, inputs, tmp_path, capsys):
    _, plain, _ = runs
    out = tmp_path / "out.npz"
    argv = ["edit", str(plain), "--input", str(inputs["fit"]), "--input", str(inputs[name])]
    line = error_line([*argv, "--strength", "0.5", "--out", str(out)], capsys)
    assert line == f"denoisekit: error: {inputs[name]}: {message}"
    assert not out.exists()


# ----------------------------------------------------------------------- sizes beyond memory


@pytest.mark.parametrize(
    ("override", "key", "blamed"),
    [
        ("backbone.channels=1000000000", "backbone.channels", "backbone.channels"),
        ("backbone.channel_mults=[1, 2, 100000000]", "backbone.channel_mults", None),
        ("backbone.num_res_blocks=100000000", "backbone.num_res_blocks", None),
    ],
)
def test_a_network_too_big_for_memory_names_the_option(override, key, blamed, tmp_path, capsys):
    path = write_recipe(tmp_path)
    line = error_line(["recipe", "check", str(path), "--set", override], capsys)
    assert line.startswith(f"denoisekit: error: {path}: {key}: storing ")
    assert "parameters (float32) needs at least " in line and "this machine has" in line
    blamed = blamed or (f"{key}[2]" if "mults" in key else key)
    assert line.endswith(f"; lower {blamed} (set by --set)")


def test_a_training_batch_beyond_the_limit_says_how_many_images_fit(tmp_path, capsys, monkeypatch):
    """1 MiB: the tiny unet's 44,969 parameters need 8 x 44,969 bytes with their gradients,
    each image at least 123,904 bytes of activations: 5 images fit, 8 do not."""
    monkeypatch.setenv("DENOISEKIT_MEMORY_LIMIT_GB", str(1 / 1024))
    path = write_recipe(tmp_path)
    out = ["--out", str(tmp_path / "run")]
    for argv in (["recipe", "check", str(path)], ["train", str(path), *out]):
        line = error_line(argv, capsys)
        assert line == (
            f"denoisekit: error: {path}: train.batch_size: training a micro-batch of 8 images "
            "(float32 activations and weights) needs at least 1.29 MiB, more than the 1 MiB "
            "that DENOISEKIT_MEMORY_LIMIT_GB allows; 5 images fit: lower train.batch_size, or "
            "raise train.grad_accum (micro-batches of batch_size / grad_accum)"
        )
    assert not (tmp_path / "run").exists()
    assert main(["recipe", "check", str(path), "--set", "train.grad_accum=2"]) == 0


def test_sampling_a_run_checks_no_training_batch(runs, tmp_path, monkeypatch):
    _, plain, _ = runs
    monkeypatch.setenv("DENOISEKIT_MEMORY_LIMIT_GB", str(1 / 1024))
    assert main(["sample", str(plain), "-n", "2", "--out", str(tmp_path / "s.npz")]) == 0


def test_one_image_too_big_names_the_image_size(tmp_path, capsys):
    path = write_recipe(tmp_path)
    size = ["--set", "backbone.image_size=65536", "--set", "data.image_size=65536"]
    argv = ["recipe", "check", str(path), *size, "--set", "backbone.attention_resolutions=[]"]
    line = error_line(argv, capsys)
    assert f"{path}: backbone.image_size: training on one image (float32) needs at least " in line
    assert line.endswith("; lower backbone.image_size or the widths (set by --set)")


@pytest.mark.parametrize("value", ["lots", "0", "nan"])
def test_a_bad_memory_limit_is_one_line(value, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DENOISEKIT_MEMORY_LIMIT_GB", value)
    line = error_line(["recipe", "check", str(write_recipe(tmp_path))], capsys)
    assert (
        line == f"denoisekit: error: DENOISEKIT_MEMORY_LIMIT_GB={value!r}: give a number of GiB > 0"
    )


def test_a_diffusers_config_too_big_names_its_field_before_allocating(tmp_path, capsys):
    pytest.importorskip("diffusers", reason="diffusers (the bench extra) is not installed")
    import json

    from tests.core.test_interop import DIGITS_LAYOUT, save_model

    save_model(tmp_path / "model", DIGITS_LAYOUT)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["block_out_channels"] = [8, 10**12]
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    argv = ["import-diffusers", str(tmp_path / "model"), "--out", str(tmp_path / "run")]
    line = error_line(argv, capsys)
    assert line.startswith(
        f"denoisekit: error: {tmp_path / 'model'}: block_out_channels[1] = 1000000000000: "
        "storing 1.18e+26 parameters (float32) needs at least "
    )
    assert line.endswith("; lower it")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_more_images_than_memory_holds_names_the_count(command, runs, tmp_path, capsys):
    _, plain, _ = runs
    out = ["--out", str(tmp_path / "s.npz")] if command == "sample" else ["--metric", "fd"]
    argv = [command, str(plain), "-n", str(10**12), *out]
    line = error_line(argv, capsys)
    assert line.startswith(
        f"denoisekit: error: -n {10**12}: holding {10**12} images of 1×8×8 (float32) needs at "
        "least 233 TiB, more than the "
    )
    assert line.endswith("; draw fewer images")


def test_a_sampling_batch_beyond_the_limit_names_batch_size(runs, tmp_path, capsys, monkeypatch):
    """Under 1 MiB, 2,000 images of 1×8×8 (256 bytes each in float32) are held, but not
    with a batch of all 2,000 in flight (two more copies): 1,536,000 bytes."""
    _, plain, _ = runs
    monkeypatch.setenv("DENOISEKIT_MEMORY_LIMIT_GB", str(1 / 1024))
    argv = ["sample", str(plain), "-n", "2000", "--out", str(tmp_path / "s.npz")]
    line = error_line([*argv, "--batch-size", "2000"], capsys)
    assert line == (
        "denoisekit: error: --batch-size 2000: sampling 2000 images at once needs at least "
        "1.46 MiB, more than the 1 MiB that DENOISEKIT_MEMORY_LIMIT_GB allows; use a smaller "
        "--batch-size"
    )


@pytest.mark.parametrize(
    ("hook", "key"),
    [
        ({"preview": {"num_images": 10**9}}, "num_images"),
        ({"evaluate": {"num_samples": 10**9}}, "num_samples"),
    ],
)
def test_hooks_drawing_more_images_than_memory_holds(hook, key, tmp_path, capsys):
    path = write_recipe(tmp_path, {"hooks": hook, "metrics": {"fd": {}}})
    line = error_line(["recipe", "check", str(path)], capsys)
    name = next(iter(hook))
    assert f"{path}: hooks.{name}.{key}: " in line and "needs at least " in line


def test_more_timestep_bins_than_timesteps_is_one_line(tmp_path, capsys):
    """Before: the tensorboard hook allocated the bins and failed in the allocator."""
    path = write_recipe(tmp_path, {"hooks": {"tensorboard": {"timestep_bins": 10**9}}})
    line = error_line(["recipe", "check", str(path)], capsys)
    assert line == (
        f"denoisekit: error: {path}: hooks.tensorboard.timestep_bins: 1000000000 bins for the "
        "schedule's 100 timesteps; set hooks.tensorboard.timestep_bins to at most 100"
    )


def test_sample_time_drawing_more_than_memory_holds(runs, capsys):
    """Before: it made 10**12 per-image generators before drawing anything (it hung)."""
    _, plain, _ = runs
    argv = ["eval", str(plain), "-n", "4", "--metric", "sample-time"]
    line = error_line([*argv, "--set", f"metrics.sample-time.num_images={10**12}"], capsys)
    assert f"metrics.sample-time.num_images: holding {10**12} float32 images of 1×8×8" in line
