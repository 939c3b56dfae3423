"""The example plugins under examples/: installed for real, loaded, trained, sampled, checked.

* ``examples/denoisekit-karras`` is pip-installed (offline, into a temporary ``--target``)
  and used through its ``denoisekit`` entry point by the real command line; its own test
  suite, written with ``denoisekit.testing``, passes against the installed copy.
* ``examples/local-plugin`` is a recipe whose plugin module sits beside it
  (``plugins = [...]`` alone, entry points off).
* Its dependency pin admits this denoisekit and excludes the next minor release, which may
  change the plugin API (docs/writing-a-plugin.md, "Compatibility").
* The Euler and Heun samplers converge to the probability-flow ODE's closed-form map on
  Gaussian data, at their orders (1 and 2).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from denoisekit import Denoiser, DiscreteSchedule
from denoisekit.cli import main
from denoisekit.errors import RecipeError
from denoisekit.host.plugin_manager import DISABLE_AUTOLOAD_ENV, get_plugin_manager
from denoisekit.host.recipe import load_recipe
from denoisekit.host.registry import Registry
from denoisekit.testing import (
    check_sampler,
    check_schedule,
    single_thread,
    train_tiny,
    write_recipe,
)
from tests.plugins.sampler_oracles import MU, SIGMA, GaussianOracle

ROOT = Path(__file__).resolve().parents[1]
KARRAS = ROOT / "examples" / "denoisekit-karras"
LOCAL = ROOT / "examples" / "local-plugin"
#: The example's release: 0.2.0, ported to denoisekit 0.2's sampler contract.
EXAMPLE_VERSION = "0.2.0"


def _forget(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


# --------------------------------------------------------------------------- installed


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``pip install --no-deps --no-build-isolation --no-index --target SITE`` of a copy.

    A copy, because setuptools builds in the source tree (``build/``, ``*.egg-info``).
    Returns ``(SITE, the copied package folder)``.
    """
    if importlib.util.find_spec("setuptools") is None:  # --no-build-isolation needs it here
        pytest.skip("setuptools is not installed: cannot build the example offline")
    work = tmp_path_factory.mktemp("karras")
    package = work / "denoisekit-karras"
    shutil.copytree(
        KARRAS,
        package,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"),
    )
    site = work / "site"
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--disable-pip-version-check",
        "--quiet",
        "--target",
        str(site),
        str(package),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    return site, package


@pytest.fixture
def on_path(installed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The installed site folder on sys.path, entry points on; forgotten afterwards."""
    site, package = installed
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    monkeypatch.syspath_prepend(str(site))
    _forget("denoisekit_karras")
    try:
        yield package
    finally:
        _forget("denoisekit_karras")


def test_installed_package_declares_its_entry_point(on_path):
    (ep,) = [
        ep for ep in importlib.metadata.entry_points(group="denoisekit") if ep.name == "karras"
    ]
    assert ep.value == "denoisekit_karras.plugin"
    assert (ep.dist.name, ep.dist.version) == ("denoisekit-karras", EXAMPLE_VERSION)
    registry = Registry.from_plugin_manager(get_plugin_manager())
    for kind, name in [("sampler", "euler"), ("sampler", "heun"), ("backbone", "tinyconv")]:
        entry = registry.get(kind, name)
        assert entry.plugin == "karras"
        assert f"denoisekit-karras {EXAMPLE_VERSION}" in entry.source
    assert registry.get("hook", "loss-by-sigma").plugin == "karras"


def test_the_example_pins_this_minor_release_of_denoisekit(on_path):
    from packaging.requirements import Requirement
    from packaging.version import Version

    import denoisekit

    requires = importlib.metadata.distribution("denoisekit-karras").requires or []
    (pin,) = [Requirement(r) for r in requires if Requirement(r).name == "denoisekit"]
    major, minor, _ = Version(denoisekit.__version__).release
    assert pin.specifier.contains(denoisekit.__version__)
    assert not pin.specifier.contains(f"{major}.{minor + 1}.0")  # the next minor release
    assert not pin.specifier.contains(f"{major}.{minor - 1}.0") or minor == 0  # the last
    assert importlib.metadata.version("denoisekit-karras") == EXAMPLE_VERSION


def test_installed_package_trains_and_samples_through_entry_points(on_path, tmp_path, capsys):
    """`denoisekit train` then `denoisekit sample` with tinyconv, heun, euler, loss-by-sigma."""
    recipe = on_path / "recipes" / "karras-digits.toml"
    out = tmp_path / "run"
    small = [
        "train.steps=3",
        "train.batch_size=16",
        "train.log_every=1",
        "train.device='cpu'",
        "backbone.channels=16",
        "backbone.num_blocks=2",
        "lr_schedule.warmup_steps=1",
        "hooks.checkpoint.every=3",
        "sampler.steps=3",
    ]
    train_args = ["train", str(recipe), "--out", str(out)]
    with single_thread():
        assert main(train_args + [arg for s in small for arg in ("--set", s)]) == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3]
        assert any(k.startswith("loss_sigma/") for k in rows[0])  # the hook logged
        versions = json.loads((out / "versions.json").read_text())
        assert f"denoisekit-karras {EXAMPLE_VERSION}" in versions["plugins"]["karras"]
        npz = tmp_path / "samples.npz"
        sample_args = ["sample", str(out), "-n", "5", "--out", str(npz), "--batch-size", "3"]
        assert main([*sample_args, "--sampler", "euler", "--set", "sampler.steps=4"]) == 0
    assert "sampler euler" in capsys.readouterr().out
    images = np.load(npz)["arr_0"]
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8


def test_example_package_tests_pass_with_the_testing_kit(installed):
    """The example's own suite (ComponentConformance, fixtures) against the installed copy."""
    site, package = installed
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env.pop(DISABLE_AUTOLOAD_ENV, None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 15 and "skipped" not in result.stdout, report


# --------------------------------------------------------------------------- plugins = [...]


def test_recipe_plugin_module_beside_the_recipe(tmp_path, monkeypatch):
    """examples/local-plugin: the schedule comes from the module the recipe names, alone."""
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    folder = tmp_path / "local-plugin"
    shutil.copytree(LOCAL, folder)
    _forget("sigmoid_schedule")
    try:
        run = train_tiny(
            folder / "sigmoid-digits.toml",
            overrides=[
                "train.steps=2",
                "train.batch_size=8",
                "train.device='cpu'",
                "backbone.channels=8",
                "backbone.num_res_blocks=1",
                "backbone.groups=4",
                "sampler.steps=3",
            ],
            out_dir=tmp_path / "run",
        )
        assert run.step == 2
        assert run.registry.get("schedule", "sigmoid").source == "recipe"
        assert set(run.registry.plugins) >= {"sigmoid_schedule"}
        # The schedule built is the recipe's: alpha_bar at s = t / T from Chen's formula.
        ab = run.schedule.alphas_cumprod
        s, tau = 500 / 1000, 1.1
        v = [1 / (1 + math.exp(-x / tau)) for x in (-3.0, 3.0, s * 6.0 - 3.0)]
        assert ab[499].item() == pytest.approx((v[1] - v[2]) / (v[1] - v[0]), rel=1e-12)
        with single_thread():
            images = run.sample(2, generator=torch.Generator().manual_seed(0))
        assert images.shape == (2, 1, 8, 8)
        module = sys.modules["sigmoid_schedule"]
        (spec,) = module.denoisekit_components()
        check_schedule(spec)
        check_schedule(spec, module.SigmoidConfig(num_timesteps=50, tau=0.5, start=0.0))
    finally:
        _forget("sigmoid_schedule")


def test_local_schedule_bounds_its_timesteps_and_samplers_check_against_them(tmp_path, monkeypatch):
    """The sigmoid schedule states its length; a sampler asking for more fails when loaded."""
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    shutil.copytree(LOCAL, tmp_path / "local-plugin")
    recipe = tmp_path / "local-plugin" / "sigmoid-digits.toml"
    _forget("sigmoid_schedule")
    try:
        assert load_recipe(recipe, ["sampler.steps=1000"]).schedule.config.num_timesteps == 1000
        with pytest.raises(RecipeError, match=r"sampler\.steps: 1001 steps exceed the schedule's "):
            load_recipe(recipe, ["sampler.steps=1001"])
        message = r"schedule\.num_timesteps: 'num_timesteps' must be an "
        with pytest.raises(RecipeError, match=message):
            load_recipe(recipe, ["schedule.num_timesteps=1000000000000"])
    finally:
        _forget("sigmoid_schedule")


# --------------------------------------------------------------------------- the samplers


@pytest.fixture
def karras(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The example's sampler module, imported from its source folder."""
    monkeypatch.syspath_prepend(str(KARRAS / "src"))
    _forget("denoisekit_karras")
    try:
        yield importlib.import_module("denoisekit_karras.sampler")
    finally:
        _forget("denoisekit_karras")


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_samplers_pass_the_sampler_conformance_suite(karras, name):
    spec = {s.name: s for s in karras.SPECS}[name]
    check_sampler(spec)
    config = spec.config(steps=9, spacing="trailing", clip_denoised=True)
    check_sampler(spec, config)


def _pf_ode(karras, order: int, n: int, prediction: str = "eps") -> tuple[torch.Tensor, ...]:
    """Sample Gaussian data N(MU, SIGMA²) with its exact denoiser; return (output, target)."""
    schedule = DiscreteSchedule.from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    ab = schedule.alphas_cumprod
    sigma = ((1 - ab) / ab).sqrt()
    s_max, s_min = sigma[-1].item(), sigma[0].item()
    x_T = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # Data x0 ~ N(mu, s²): x = x0 + sigma eps ~ N(mu, s² + sigma²), and the PF-ODE
    # dx/dsigma = (x - E[x0 | x]) / sigma, E[x0 | x] = mu + s² / (s² + sigma²) (x - mu),
    # solves to x(b) - mu = sqrt((s² + b²) / (s² + a²)) (x(a) - mu). Both schemes end with
    # the step sigma_min -> 0, which is x -> E[x0 | x] (EDM Algorithm 1, lines 5-6): the
    # limit is the exact flow from sigma_max to sigma_min followed by the denoiser.
    mu, s2 = MU, SIGMA**2
    x_start = x_T / ab[-1].sqrt()
    at_min = mu + math.sqrt((s2 + s_min**2) / (s2 + s_max**2)) * (x_start - mu)
    target = mu + s2 / (s2 + s_min**2) * (at_min - mu)
    config_cls = karras.EulerConfig if order == 1 else karras.HeunConfig
    oracle = GaussianOracle(ab.numpy(), MU, SIGMA, prediction)
    sampler_cls = karras.EulerSampler if order == 1 else karras.HeunSampler
    sampler = sampler_cls(config_cls(steps=n))
    out = sampler.sample(Denoiser(oracle, schedule, prediction), x_T, generator=None)
    assert oracle.calls == sampler.num_evaluations(1000) == (n if order == 1 else 2 * n - 1)
    return out, target


def test_euler_and_heun_converge_to_the_probability_flow_map_at_orders_1_and_2(karras):
    steps = [8, 16, 32, 64, 128]
    euler, heun = (
        [(lambda o, t: (o - t).abs().max().item())(*_pf_ode(karras, order, n)) for n in steps]
        for order in (1, 2)
    )
    orders_euler = [math.log2(a / b) for a, b in itertools.pairwise(euler)]
    orders_heun = [math.log2(a / b) for a, b in itertools.pairwise(heun)]
    assert all(0.75 < p < 1.4 for p in orders_euler), (euler, orders_euler)
    assert all(1.75 < p < 2.8 for p in orders_heun[1:]), (heun, orders_heun)
    assert heun[-1] < 1e-3
    # At (about) the same number of network evaluations, Heun is more accurate.
    for n in (32, 64):
        assert heun[steps.index(n)] < euler[steps.index(n) + 1]


def test_the_sampler_sees_the_model_only_through_the_denoiser(karras):
    """The same samples whatever the backbone predicts (eps, x0 or v)."""
    eps, _ = _pf_ode(karras, 2, 12, "eps")
    for prediction in ("x0", "v"):
        other, _ = _pf_ode(karras, 2, 12, prediction)
        torch.testing.assert_close(other, eps, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_steps_beyond_the_schedule_fail_when_the_recipe_is_loaded(karras, tmp_path, name):
    """Third-party samplers check their steps through the public ComponentSpec.check."""
    registry = Registry.from_plugin_manager(
        get_plugin_manager(autoload=False, plugins=["denoisekit_karras.plugin"])
    )
    path = write_recipe(tmp_path, {"sampler": {"type": name, "steps": 100}})
    assert load_recipe(path, registry=registry).sampler.config.steps == 100  # = T: fine
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["sampler.steps=101"], registry=registry)
    expected = "sampler.steps: 101 noise levels exceed the schedule's 100 timesteps"
    assert expected in str(info.value)
