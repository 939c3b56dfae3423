"""Latent diffusion, stage 2 (issue 22; docs/latent.md): a diffusion recipe with ``[latent]``
trains and samples on a frozen autoencoder's latents.

The autoencoders are tiny random ``kl`` ones (nothing downloaded): an autoencoder run folder
made by hand through the engine's checkpoint writer (its stored recipe, trained weights and
EMA weights, as an autoencoder run keeps them), and a diffusers ``AutoencoderKL`` folder
written by ``save_pretrained``. Digits are 1×8×8; the autoencoders downsample by 2 into
2×4×4 latents.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch

import denoisekit
from denoisekit.cli import main
from denoisekit.engine import latent_cache
from denoisekit.engine.autoencoder_source import load_autoencoder, weights_sha256
from denoisekit.engine.build import build_run, load_trained
from denoisekit.engine.checkpoint import load_checkpoint, save_checkpoint
from denoisekit.engine.editing import EditOptions, edit_images
from denoisekit.engine.evaluation import draw_samples
from denoisekit.engine.latents import calibrate
from denoisekit.engine.loop import resume_from, train
from denoisekit.engine.run_folder import RECIPE_FOLDER_KEY
from denoisekit.errors import DenoisekitError, RecipeError
from denoisekit.files import CACHE_ENV, RunPaths
from denoisekit.host.recipe import load_recipe
from denoisekit.host.registry import load_registry
from denoisekit.testing import TINY_RECIPE, write_recipe
from denoisekit.testing.conformance import single_thread

KL = {
    "type": "kl",
    "in_channels": 1,
    "block_channels": [8, 16],
    "num_res_blocks": 1,
    "latent_channels": 2,
    "groups": 4,
}
LATENT_UNET = {**TINY_RECIPE["backbone"], "in_channels": 2, "image_size": 4,
               "channel_mults": [1], "attention_resolutions": []}  # fmt: skip


@pytest.fixture(autouse=True)
def _cache_and_threads(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with single_thread():
        yield


def _digits() -> Any:
    return denoisekit.build("data", "digits", root=Path.cwd(), train=True)


def _autoencoder(seed: int = 0, calibrated: bool = False, table: dict | None = None) -> Any:
    torch.manual_seed(seed)
    options = {k: v for k, v in (table or KL).items() if k != "type"}
    ae = denoisekit.build("autoencoder", "kl", **options)
    if calibrated and ae.latent_shape((1, 8, 8)) == (2, 4, 4):
        calibrate(ae, _digits().images.split(256))
    return ae


def make_ae_run(
    folder: Path, *, seed: int = 0, calibrated: bool = True, table: dict | None = None
) -> Path:
    """An autoencoder run folder as ``denoisekit train`` of an autoencoder recipe leaves it:
    the resolved recipe (``[autoencoder]``, default :data:`KL`), the trained weights and
    the EMA weights under ``hooks.ema``, each calibrated on the digits."""
    table = table or KL
    ae = _autoencoder(seed, calibrated, table)
    ema = copy.deepcopy(ae)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)  # the EMA weights differ from the trained ones
    if calibrated and ema.latent_shape((1, 8, 8)) == (2, 4, 4):  # the sampling weights'
        calibrate(ema, _digits().images.split(256))
    recipe = {"name": folder.name, "data": {"type": "digits"}, "autoencoder": table}
    state = {
        "step": 10,
        "model": ae.state_dict(),
        "hooks": {"ema": {"model": ema.state_dict(), "num_updates": 10}},
        "recipe": tomli_w.dumps(recipe),
        RECIPE_FOLDER_KEY: ".",
    }
    save_checkpoint(RunPaths(folder).last_checkpoint, state)
    return folder


def make_diffusers_folder(folder: Path, seed: int = 0) -> Path:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    model = diffusers.AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 16],
        layers_per_block=1,
        latent_channels=2,
        norm_num_groups=4,
        sample_size=8,
        scaling_factor=0.5,
    )
    model.save_pretrained(folder)
    return folder


def latent_recipe(tmp_path: Path, autoencoder: str = "ae", **tables: Any) -> Path:
    data = {
        "backbone": LATENT_UNET,
        "latent": {"autoencoder": autoencoder, **tables.pop("latent", {})},
        **tables,
    }
    return write_recipe(tmp_path, data, name="latent")


def _build(path: Path, *overrides: str, out: str = "run") -> Any:
    recipe = load_recipe(path, list(overrides))
    return build_run(recipe, out_dir=path.parent / out)


# --------------------------------------------------------------------------- loading


def test_the_autoencoder_of_a_run_folder_has_its_ema_weights_and_its_calibration(tmp_path):
    folder = make_ae_run(tmp_path / "ae")
    loaded = load_autoencoder(folder, registry=load_registry(autoload=False))
    state = load_checkpoint(RunPaths(folder).last_checkpoint)
    for name, value in loaded.module.state_dict().items():
        assert torch.equal(value, state["hooks"]["ema"]["model"][name]), name
    assert not torch.equal(loaded.module.scale, state["model"]["scale"])
    assert not any(p.requires_grad for p in loaded.module.parameters())
    assert not loaded.module.training
    assert float(loaded.module.scale.sub(1).abs().max()) > 0.01  # calibrated, not the default


def test_a_diffusers_folder_is_converted_through_the_registry(tmp_path):
    folder = make_diffusers_folder(tmp_path / "vae")
    loaded = load_autoencoder(folder, registry=load_registry(autoload=False))
    assert loaded.table["type"] == "kl" and loaded.table["latent_channels"] == 2
    assert torch.equal(loaded.module.scale, torch.full((2,), 0.5))
    assert loaded.module.latent_shape((1, 8, 8)) == (2, 4, 4)


def test_a_run_without_an_autoencoder_is_one_line(tmp_path):
    folder = tmp_path / "pixel"
    recipe = copy.deepcopy(TINY_RECIPE)
    save_checkpoint(
        RunPaths(folder).last_checkpoint,
        {"step": 0, "model": {}, "recipe": tomli_w.dumps(recipe)},
    )
    with pytest.raises(RecipeError, match=r"latent.autoencoder: .*not an autoencoder run"):
        load_autoencoder(folder, registry=load_registry(autoload=False))


# --------------------------------------------------------------------------- recipe check


def test_recipe_check_names_the_autoencoder_to_train_first(tmp_path, capsys):
    path = latent_recipe(tmp_path, "../runs/fashion-ae")
    assert main(["recipe", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "latent.autoencoder" in err and "denoisekit train recipes/fashion-ae.toml" in err


def test_a_latent_shape_the_backbone_does_not_take_is_one_line(tmp_path, capsys):
    make_ae_run(tmp_path / "ae")
    path = latent_recipe(tmp_path, backbone={**LATENT_UNET, "image_size": 8})
    assert main(["recipe", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "[backbone]" in err and "2×4×4 latents" in err and "backbone.image_size = 4" in err
    good = latent_recipe(tmp_path)
    assert main(["recipe", "check", str(good)]) == 0


def test_nll_is_refused_for_a_latent_run_in_one_line(tmp_path, capsys):
    make_ae_run(tmp_path / "ae")
    path = latent_recipe(tmp_path, metrics={"nll": {}})
    assert main(["recipe", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "metrics.nll" in err and "not defined for latent runs" in err


# --------------------------------------------------------------------------- training


def test_a_latent_run_trains_frozen_and_samples_decoded_images(tmp_path):
    make_ae_run(tmp_path / "ae")
    run = _build(latent_recipe(tmp_path))
    ae = run.latent.autoencoder
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    optimized = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in ae.parameters()}
    train(run)
    assert all(torch.equal(before[k], v) for k, v in ae.state_dict().items())
    assert run.denoiser.data_range is None
    images = run.sample(3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 8, 8)
    assert float(images.abs().max()) <= 1.0
    state = run.state_dict()
    assert not any(k.startswith("encoder") or k == "shift" for k in state["model"])
    assert state["latent"]["sha256"] == run.latent.source.sha256


def test_sampling_does_not_clamp_latents(tmp_path):
    """Pixel space clamps to [-1, 1]; the latents a latent run samples are not clamped."""
    make_ae_run(tmp_path / "ae")
    run = _build(latent_recipe(tmp_path))
    x_T = torch.randn((4, 2, 4, 4), generator=torch.Generator().manual_seed(0)) * 30
    latents = run.sampler.sample(
        run.sampling_denoiser(), x_T, generator=torch.Generator().manual_seed(0)
    )
    assert float(latents.abs().max()) > 1.0


def test_a_resumed_latent_run_equals_an_uninterrupted_one(tmp_path):
    make_ae_run(tmp_path / "ae")
    path = latent_recipe(tmp_path, train={"steps": 4, "batch_size": 8})
    whole = train(_build(path, out="whole"))
    half = train(_build(path, "train.steps=2", out="half"))
    checkpoint = half.save_checkpoint(tmp_path / "half.pt")
    resumed = _build(path, out="resumed")
    resume_from(resumed, checkpoint)
    train(resumed)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_one_posterior_sample_per_step_from_the_cache_or_the_encoder(tmp_path):
    """The cached float16 posteriors and the encoder run at every step give the same
    latents (to float16 rounding) from the same batch and generator; a fresh sample per
    generator state; ``mode`` draws nothing and gives the normalized mean."""
    make_ae_run(tmp_path / "ae")
    path = latent_recipe(tmp_path)
    cached, encoded = _build(path, out="a"), _build(path, "latent.cache=false", out="b")
    params, images = next(cached.batches)[0], next(encoded.batches)[0]
    assert params.shape == (8, 4, 4, 4) and images.shape == (8, 1, 8, 8)
    z = cached.latent.training_latents(params, torch.Generator().manual_seed(3))
    z_encoded = encoded.latent.training_latents(images, torch.Generator().manual_seed(3))
    torch.testing.assert_close(z, z_encoded, rtol=0, atol=2e-2)
    assert torch.equal(z, cached.latent.training_latents(params, torch.Generator().manual_seed(3)))
    assert not torch.equal(
        z, cached.latent.training_latents(params, torch.Generator().manual_seed(4))
    )
    mode = _build(path, "latent.posterior=mode", out="c")
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    z_mode = mode.latent.training_latents(params, generator)
    assert torch.equal(generator.get_state(), state)
    torch.testing.assert_close(z_mode, mode.latent.encode(images), rtol=0, atol=2e-2)


def test_a_diffusers_autoencoder_trains_a_latent_run(tmp_path):
    make_diffusers_folder(tmp_path / "vae")
    run = train(_build(latent_recipe(tmp_path, "vae")))
    assert run.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 8, 8)


# --------------------------------------------------------------------------- the cache


def _cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "latents").glob("*.safetensors"))


def test_the_cache_is_reused_and_rebuilt_when_anything_changes(tmp_path, caplog):
    make_ae_run(tmp_path / "ae")
    path = latent_recipe(tmp_path)
    caplog.set_level(logging.INFO, logger="denoisekit.engine.latent_cache")

    def built(*overrides: str) -> bool:
        caplog.clear()
        _build(path, *overrides)
        messages = [r.getMessage() for r in caplog.records if r.name == latent_cache.__name__]
        assert len(messages) == 1, messages
        return messages[0].startswith("latent cache: encoding")

    assert built()
    assert not built()  # nothing changed: reused
    assert len(_cache_files(tmp_path)) == 1
    make_ae_run(tmp_path / "ae", seed=1)  # other autoencoder weights
    assert built()
    assert built("data.split=all")  # other data
    assert not built("data.split=all")
    assert len(_cache_files(tmp_path)) == 3


def test_a_flip_changes_the_cache_which_holds_both_orientations(tmp_path):
    """hflip is a transform: another key; the cache then holds each image's flipped
    encoding (the encoder does not commute with the flip), drawn with probability hflip."""
    from PIL import Image

    make_ae_run(tmp_path / "ae")
    images = tmp_path / "images"
    images.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        pixels = (torch.rand(8, 8, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(images / f"{i}.png")
    data = {"type": "image-folder", "path": "images", "image_size": 8, "mode": "L"}
    path = latent_recipe(tmp_path, data=data, train={"batch_size": 4})
    flat = _build(path, "data.hflip=0.0", out="flat")
    flipped = _build(path, "data.hflip=1.0", out="flipped")
    assert len(_cache_files(tmp_path)) == 2
    assert flat.batches.dataset.mean.shape[1] == 1 and flipped.batches.dataset.mean.shape[1] == 2
    ae = flat.latent.autoencoder
    picture = flat.data[0][0][None]
    want = ae.encode(picture.flip(-1)).mean.half()[0]
    params, _ = flipped.batches.dataset[0]  # hflip = 1: always the flipped image's
    assert torch.equal(params[:2].half(), want)
    assert not torch.equal(want, ae.encode(picture).mean.flip(-1).half()[0])


def test_calibration_gives_zero_mean_unit_variance_cached_latents(tmp_path):
    make_ae_run(tmp_path / "ae", calibrated=True)
    run = _build(latent_recipe(tmp_path))
    cache = run.batches.dataset
    params = torch.stack([cache[i][0] for i in range(len(cache))])
    z = run.latent.training_latents(params, torch.Generator().manual_seed(0))
    values = z.transpose(0, 1).flatten(1)  # (C, N h w)
    n = values.shape[1]
    assert values.mean(1).abs().max() < 5 / n**0.5 + 1e-2
    assert (values.var(1) - 1).abs().max() < 5 * (2 / n) ** 0.5 + 1e-2


# --------------------------------------------------------------------------- decoding


def test_edits_encode_the_input_and_keep_the_known_pixels(tmp_path):
    make_ae_run(tmp_path / "ae")
    path = latent_recipe(tmp_path)
    train(_build(path))
    run = load_trained(_build(path).save_checkpoint(tmp_path / "trained.pt"))
    assert run.latent is not None and run.image_shape == (1, 8, 8)
    images = torch.rand((2, 1, 8, 8), generator=torch.Generator().manual_seed(1)) * 2 - 1
    mask = torch.zeros((1, 1, 8, 8))
    mask[..., :3, :] = 1  # regenerate the top three rows
    out = edit_images(run, images, mask=mask, options=EditOptions(strength=0.7))
    assert out.shape == images.shape
    assert torch.equal(out[..., 3:, :], images[..., 3:, :])
    assert not torch.equal(out[..., :3, :], images[..., :3, :])
    kept = edit_images(run, images, mask=None, options=EditOptions(strength=0.0))
    assert torch.equal(kept, images)
    latent_mask = run.latent.downsample_mask(mask)
    assert latent_mask.shape == (1, 1, 4, 4) and latent_mask[..., :2, :].eq(1).all()
    assert latent_mask[..., 2:, :].eq(0).all()


def test_evaluation_scores_decoded_images(tmp_path):
    make_ae_run(tmp_path / "ae")
    run = _build(latent_recipe(tmp_path))
    drawn = draw_samples(run, 3, batch_size=2)  # what every metric's samples come from
    assert drawn.images.shape == (3, 1, 8, 8) and float(drawn.images.abs().max()) <= 1.0


def test_a_changed_autoencoder_is_said_when_a_run_is_loaded(tmp_path, caplog):
    make_ae_run(tmp_path / "ae")
    path = latent_recipe(tmp_path)
    checkpoint = _build(path).save_checkpoint(tmp_path / "trained.pt")
    make_ae_run(tmp_path / "ae", seed=5)
    with caplog.at_level(logging.WARNING):
        load_trained(checkpoint)
    assert any("differs from the one this run was trained on" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_weights_hash_sees_every_tensor():
    ae = _autoencoder()
    state = ae.state_dict()
    base = weights_sha256(state)
    changed = dict(state, scale=state["scale"] * 2)
    assert weights_sha256(changed) != base
    assert weights_sha256(dict(state)) == base


def test_cache_key_changes_with_each_input(tmp_path):
    args = ("a" * 64, {"type": "digits", "split": "train"}, tmp_path, 10)
    base = latent_cache.cache_key(*args)
    assert latent_cache.cache_key(*args) == base
    assert latent_cache.cache_key("b" * 64, *args[1:]) != base
    assert latent_cache.cache_key(args[0], {"type": "digits", "split": "all"}, *args[2:]) != base
    assert latent_cache.cache_key(*args[:3], 11) != base
    with pytest.raises(DenoisekitError):
        load_autoencoder(tmp_path / "nothing", registry=load_registry(autoload=False))
