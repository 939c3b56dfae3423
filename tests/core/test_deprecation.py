"""Names 0.2.0 removed or moved still work until 0.3.0, each with a
``DenoisekitDeprecationWarning`` naming its replacement; each is in the changelog."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest
import torch

import denoisekit
import denoisekit.testing
from denoisekit import DenoisekitDeprecationWarning, diffusion
from denoisekit.engine.run import RENAMED
from denoisekit.testing import toy_schedule, train_tiny, write_recipe
from tests.import_rules import ROOT

CHANGELOG = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")


def test_start_noise_copies_x_T_or_draws_per_image_with_a_warning():
    g = [torch.Generator().manual_seed(s) for s in (3, 4)]
    with pytest.warns(DenoisekitDeprecationWarning, match=r"start_noise .*diffusion\.randn"):
        start_noise = diffusion.start_noise
    drawn = start_noise((2, 1, 2, 2), g)
    expected = diffusion.randn((2, 1, 2, 2), [torch.Generator().manual_seed(s) for s in (3, 4)])
    assert torch.equal(drawn, expected)
    x_T = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    copy = start_noise((2, 1, 2, 2), None, x_T=x_T)
    assert torch.equal(copy, x_T) and copy.data_ptr() != x_T.data_ptr()
    with pytest.raises(ValueError, match="x_T has shape"):
        start_noise((3, 1, 2, 2), None, x_T=x_T)


def test_batch_timesteps_is_sampling_steps_t_with_a_warning():
    with pytest.warns(DenoisekitDeprecationWarning, match=r"sampling_steps\(.*\)\.t"):
        batch_timesteps = diffusion.batch_timesteps
    x_T = torch.zeros(3, 1, 2, 2)
    steps = diffusion.sampling_steps(toy_schedule(20), [19, 9, 0], x_T)
    assert torch.equal(batch_timesteps([19, 9, 0], 3, "cpu"), steps.t)


def test_option_doc_at_the_root_with_a_warning():
    import attrs

    @attrs.frozen
    class Config:
        steps: int = denoisekit.option(3, "how many")

    with pytest.warns(DenoisekitDeprecationWarning, match="denoisekit.option_doc"):
        option_doc = denoisekit.option_doc
    assert option_doc(attrs.fields(Config).steps) == "how many"


@pytest.mark.parametrize(("old", "new"), sorted(denoisekit.MOVED_MODULES.items()))
def test_moved_modules_import_by_their_old_paths_with_a_warning(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DenoisekitDeprecationWarning, match=f"module {old} .*import {new}"):
        module = importlib.import_module(old)
    public = {k for k in vars(importlib.import_module(new)) if not k.startswith("__")}
    assert public <= set(vars(module))
    assert all(getattr(module, k) is getattr(sys.modules[new], k) for k in public)


def test_unknown_names_are_still_attribute_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no attribute 'nothing'"):
            _ = diffusion.nothing
        with pytest.raises(AttributeError, match="no attribute 'nothing'"):
            _ = denoisekit.nothing
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("denoisekit.nothing")


def test_the_run_answers_to_its_parts_old_names(tmp_path):
    run = train_tiny(write_recipe(tmp_path, {"train": {"steps": 1}}), out_dir=tmp_path / "run")
    for old, new in RENAMED.items():
        with pytest.warns(DenoisekitDeprecationWarning, match=f"run.{old} .*run.{new}"):
            assert getattr(run, old) is getattr(run, new)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = run.nothing


def test_the_denoiser_answers_to_nfe():
    den = denoisekit.Denoiser(denoisekit.testing.ToyBackbone(1), toy_schedule(10))
    den.predict(torch.zeros(2, 1, 2, 2), torch.tensor([3, 4]))
    with pytest.warns(DenoisekitDeprecationWarning, match="Denoiser.nfe .*num_evaluations"):
        assert den.nfe == den.num_evaluations == 1


@pytest.mark.parametrize(
    "name",
    [
        "diffusion.start_noise",
        "diffusion.batch_timesteps",
        "denoisekit.option_doc",
        "Denoiser.nfe",
        *denoisekit.MOVED_MODULES,
        *(f"run.{old}" for old in RENAMED),
    ],
)
def test_every_deprecated_name_is_in_the_changelog_with_its_replacement(name):
    assert f"`{name}`" in CHANGELOG, f"CHANGELOG.md does not say what replaced {name}"
