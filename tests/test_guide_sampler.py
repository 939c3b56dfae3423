"""docs/writing-a-plugin.md opens with a complete sampler: run it as the guide says.

The guide's first Python block is the module ``ddim_euler.py`` (at most 40 lines); its
second is the ``check_steps`` the guide then adds. The sampler passes the conformance kit,
agrees with the built-in DDIM at eta = 0 on the same ``x_T``, trains and samples from a
recipe that names it, and, with the check, stops a recipe whose steps exceed the schedule.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from denoisekit.cli import main
from denoisekit.denoiser import Denoiser
from denoisekit.diffusion import randn
from denoisekit.host.plugin_manager import DISABLE_AUTOLOAD_ENV
from denoisekit.plugins.samplers.ddim import DDIMConfig, DDIMSampler
from denoisekit.testing import check_sampler, single_thread, train_tiny, write_recipe
from tests.plugins.sampler_oracles import WigglyEps, cos_sched

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "writing-a-plugin.md"
NAME = "ddim_euler"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)


def _write(folder: Path, *, with_check: bool = False) -> Path:
    sampler, check = _blocks()[:2]
    text = sampler
    if with_check:  # the guide: define check_steps, pass check=check_steps to the spec
        text = sampler.replace("build=EulerSampler,", "build=EulerSampler, check=check_steps,")
        assert text != sampler
        text += "\n\n" + check
    path = folder / f"{NAME}.py"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def module(tmp_path):
    spec = importlib.util.spec_from_file_location(NAME, _write(tmp_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def forget():
    yield
    sys.modules.pop(NAME, None)


def test_the_guide_opens_with_a_sampler_of_at_most_40_lines():
    text = GUIDE.read_text(encoding="utf-8")
    first = _blocks()[0]
    assert text.index("```python") < text.index("## 1."), "the sampler comes first"
    assert len(first.splitlines()) <= 40
    assert "def sample(self, denoiser, x_T, *, generator, cond=None, callback=None)" in first
    assert "check_steps" in _blocks()[1] and "num_timesteps" in _blocks()[1]


def test_it_passes_the_conformance_kit(module):
    (spec,) = module.denoisekit_components()
    check_sampler(spec)
    check_sampler(spec, module.EulerConfig(steps=7))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_it_is_ddim_at_eta_0(module, dtype, tol):
    (spec,) = module.denoisekit_components()
    den = Denoiser(WigglyEps(), cos_sched(1000), "eps")
    x_T = randn((3, 2, 5), torch.Generator().manual_seed(0), dtype=dtype)
    ddim = DDIMSampler(DDIMConfig(steps=20, eta=0.0, spacing="leading", clip_denoised=False))
    want = ddim.sample(den, x_T, generator=None)
    got = spec.build(spec.config(steps=20)).sample(den, x_T, generator=None)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_a_recipe_names_it_trains_and_samples(tmp_path, monkeypatch, forget):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    _write(tmp_path)
    path = write_recipe(
        tmp_path, {"plugins": [NAME], "sampler": {"type": "ddim-euler", "steps": 4}}
    )
    run = train_tiny(path, out_dir=tmp_path / "run")
    assert type(run.sampler).__name__ == "EulerSampler" and run.sampler.config.steps == 4
    with single_thread():
        images = run.sample(2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 8, 8) and float(images.abs().max()) <= 1.0


def test_with_the_check_a_recipe_stops_at_too_many_steps(tmp_path, monkeypatch, capsys, forget):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    _write(tmp_path, with_check=True)
    ok = write_recipe(tmp_path, {"plugins": [NAME], "sampler": {"type": "ddim-euler"}}, name="ok")
    assert main(["recipe", "check", str(ok)]) == 0
    sys.modules.pop(NAME, None)
    bad = {"plugins": [NAME], "sampler": {"type": "ddim-euler", "steps": 500}}
    assert main(["recipe", "check", str(write_recipe(tmp_path, bad, name="r"))]) == 2
    assert "sampler.steps: 500 steps exceed the schedule's 100 timesteps" in capsys.readouterr().err
