"""The ``kl`` autoencoder: shapes and dtypes for several factors and channel counts, its
``latent_shape``, its recipe check, the probe, and recipes with and without an autoencoder."""

from __future__ import annotations

import pytest
import torch

import denoisekit
from denoisekit import CheckContext, ComponentSpec, hookimpl
from denoisekit.errors import RecipeError, RegistryError
from denoisekit.host.recipe import load_recipe
from denoisekit.host.registry import load_registry
from denoisekit.plugins.autoencoders.kl import KLAutoencoder, KLConfig, check_kl, kl_facts
from denoisekit.testing import write_recipe
from denoisekit.testing.conformance import single_thread


def _kl(**options) -> KLAutoencoder:
    base = {"block_channels": (8, 16), "num_res_blocks": 1, "latent_channels": 4, "groups": 4}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return KLAutoencoder(KLConfig(**{**base, **options})).eval()


@pytest.mark.parametrize(
    ("block_channels", "in_channels", "latent_channels", "factor"),
    [((8,), 1, 1, 1), ((8, 8), 3, 4, 2), ((8, 16, 16), 1, 3, 4), ((8, 8, 8, 8), 2, 2, 8)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encode_decode_shapes_and_dtypes(block_channels, in_channels, latent_channels, factor,
                                         dtype):  # fmt: skip
    options = {"in_channels": in_channels, "latent_channels": latent_channels}
    model = _kl(block_channels=block_channels, **options).to(dtype)
    assert model.downsample_factor == factor
    x = torch.rand(2, in_channels, 16, 24, generator=torch.Generator().manual_seed(0))
    with single_thread(), torch.no_grad():
        dist = model.encode(x.to(dtype))
        out = model.decode(dist.sample(torch.Generator().manual_seed(1)))
    shape = model.latent_shape((in_channels, 16, 24))
    assert shape == (latent_channels, 16 // factor, 24 // factor)
    assert dist.mean.shape == dist.logvar.shape == (2, *shape)
    assert dist.mean.dtype == dist.logvar.dtype == out.dtype == dtype
    assert out.shape == x.shape
    assert model.shift.shape == model.scale.shape == (latent_channels,)


def test_latent_shape_refuses_images_it_cannot_give_back():
    model = _kl(block_channels=(8, 8, 8), in_channels=1)
    assert model.latent_shape((1, 28, 28)) == (4, 7, 7)
    with pytest.raises(ValueError, match=r"takes 1 channels and sides divisible by .* 4"):
        model.latent_shape((1, 30, 28))
    with pytest.raises(ValueError, match="takes 1 channels"):
        model.latent_shape((3, 28, 28))


def test_forward_is_a_sampled_reconstruction_with_its_posterior():
    model = _kl(in_channels=1)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        out, posterior = model(x, torch.Generator().manual_seed(3))
        z = posterior.sample(torch.Generator().manual_seed(3))
        torch.testing.assert_close(out, model.decode(z))


def test_config_validates_groups_and_levels():
    with pytest.raises(ValueError, match=r"'groups' \(4\) must divide every width .* 6"):
        KLConfig(block_channels=(8, 6), groups=4)
    with pytest.raises(ValueError, match="at least one level"):
        KLConfig(block_channels=())
    assert kl_facts(KLConfig()) == {"latent_channels": 3, "downsample_factor": 4}


def _problems(config: KLConfig, image_shape) -> list[tuple[str, str]]:
    facts = {"data": {"image_shape": image_shape}}
    return list(check_kl(config, CheckContext(recipe=None, facts=facts, table="autoencoder")))


def test_check_compares_the_data_with_channels_and_factor():
    config = KLConfig(in_channels=1, block_channels=(8, 8, 8), groups=4)
    assert _problems(config, (1, 28, 28)) == []
    assert _problems(config, None) == []  # unknown: nothing to say
    [(key, message)] = _problems(config, (3, 28, 28))
    assert key == "in_channels" and "set autoencoder.in_channels = 3" in message
    deep = KLConfig(in_channels=1, block_channels=(8, 8, 8, 8), groups=4)
    [(key, message)] = _problems(deep, (1, 28, 28))
    assert key == "block_channels" and "downsample by 8, which does not divide" in message


def test_a_recipe_without_an_autoencoder_is_pixel_space(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path))
    assert recipe.autoencoder is None and recipe.component("autoencoder") is None
    assert "autoencoder" not in recipe.to_dict()
    again = tmp_path / "again.toml"
    again.write_text(recipe.to_toml(), encoding="utf-8")
    assert load_recipe(again) == recipe


def test_a_diffusion_recipe_with_an_autoencoder_table_is_sent_to_latent(tmp_path):
    table = {"type": "kl", "in_channels": 1, "block_channels": [8, 8, 8, 8], "groups": 4}
    path = write_recipe(tmp_path, {"autoencoder": table})
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: autoencoder: a diffusion recipe")
    assert "[latent] autoencoder" in message  # where a diffusion recipe names its autoencoder
    assert "autoencoder.block_channels" not in message  # digits are 8×8: factor 8 fits
    # The component's own check runs in the same line: factor 16 does not fit 8×8 digits.
    deeper = {**table, "block_channels": [8, 8, 8, 8, 8]}
    with pytest.raises(RecipeError, match=r"autoencoder.block_channels: 5 levels downsample"):
        load_recipe(write_recipe(tmp_path, {"autoencoder": deeper}))
    with pytest.raises(RecipeError, match=r"autoencoder.groups: 'groups' \(3\) must divide"):
        load_recipe(write_recipe(tmp_path, {"autoencoder": {**table, "groups": 3}}))


def test_build_by_name_gives_the_default_kl_f4_layout():
    with torch.device("meta"):
        model = denoisekit.build("autoencoder", "kl")
    assert model.downsample_factor == 4 and model.latent_channels == 3
    assert [b.resnets[0].conv1.out_channels for b in model.encoder.down_blocks] == [128, 256, 512]
    assert len(model.decoder.up_blocks[0].resnets) == 3  # num_res_blocks + 1


def test_the_probe_catches_an_autoencoder_whose_decode_loses_the_shape():
    class Cropping(KLAutoencoder):
        def decode(self, z):
            return super().decode(z)[..., :-1, :]

    class Plugin:
        @hookimpl
        def denoisekit_components(self):
            probe = {"in_channels": 1, "block_channels": (8,), "groups": 4}
            spec = ComponentSpec(
                kind="autoencoder", name="cropping", config=KLConfig, build=Cropping, probe=probe
            )
            return [spec]

    with pytest.raises(RegistryError, match=r"decode\(encode\(x\).mode\(\)\) gave \(2, 1, 7, 8\)"):
        load_registry(plugins=[Plugin()], builtins=False, autoload=False)


def test_the_registry_refuses_an_encode_that_takes_the_images_by_name_only():
    class KeywordOnly(KLAutoencoder):
        def encode(self, *, x):
            return super().encode(x)

    class Plugin:
        @hookimpl
        def denoisekit_components(self):
            spec = ComponentSpec(kind="autoencoder", name="kw", config=KLConfig, build=KeywordOnly)
            return [spec]

    with pytest.raises(RegistryError, match=r"KeywordOnly\.encode\(\*, x\) does not match the "
                       r"contract's encode\(x, /\).*new in 0\.2\.0: see docs/latent\.md"):
        load_registry(plugins=[Plugin()], builtins=False, autoload=False)
