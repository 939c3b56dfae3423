"""Contract mismatches are caught when the registry is built: a method whose signature does
not take the calls the host makes is one line naming the plugin, the component, the method,
the contract and the changelog entry, at every command and before any work (exit 2).

The fixture ``sampler_v01.py`` is 0.1.0's DDIM sampler as that release had it."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from torch import nn

from denoisekit import ComponentSpec
from denoisekit.errors import ComponentError, RegistryError
from denoisekit.host.contract_checks import declared_product
from denoisekit.host.plugin_manager import DISABLE_AUTOLOAD_ENV
from denoisekit.host.registry import RegisteredComponent, Registry, load_registry
from denoisekit.host.signatures import mismatch, signature_problems
from denoisekit.testing import single_thread, train_tiny, write_recipe
from tests.core.test_error_lines import error_line

SAMPLER_V01 = Path(__file__).with_name("sampler_v01.py").read_text(encoding="utf-8")

#: What 0.2.0 says of 0.1.0's DDIM: the problem, after "plugin ... (source): ".
V01_PROBLEM = (
    "sampler 'ddim-v01' breaks the sampler contract: DDIMSampler.sample(denoiser, shape, *, "
    "generator, device='cpu', cond=None, x_T=None, callback=None, dtype=None) does not match "
    "the contract's sample(denoiser, x_T, /, *, generator, cond=None, callback=None): 'x_T' is "
    "keyword-only here, but the host passes it second, positionally (the contract changed in "
    "0.2.0: see CHANGELOG.md, 'The sampler contract', and docs/writing-a-plugin.md, 'Migrating "
    "from 0.1')"
)
ENTRY_POINT = "plugin 'oldddim' (entry point oldddim = oldddim, from denoisekit-oldddim 0.1.0)"


@pytest.fixture
def installed_v01(tmp_path, monkeypatch):
    """0.1.0's sampler installed as its author would: a distribution with an entry point."""
    site = tmp_path / "site"
    info = site / "denoisekit_oldddim-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: denoisekit-oldddim\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text("[denoisekit]\noldddim = oldddim\n")
    (site / "oldddim.py").write_text(SAMPLER_V01, encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    yield
    sys.modules.pop("oldddim", None)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A one-step tiny run, trained before the old plugin is installed."""
    folder = tmp_path_factory.mktemp("trained")
    recipe = {"train": {"steps": 1}, "hooks": {"checkpoint": {"every": 1}}}
    train_tiny(write_recipe(folder, recipe), out_dir=folder / "run")
    return folder / "run"


def test_the_previous_releases_sampler_is_refused_at_registration():
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        with pytest.raises(RegistryError) as info:
            load_registry(plugins=["sampler_v01"], autoload=False)
    finally:
        sys.path.remove(str(Path(__file__).parent))
        sys.modules.pop("sampler_v01", None)
    assert str(info.value) == f"plugin 'sampler_v01' (recipe): {V01_PROBLEM}"


@pytest.mark.parametrize(
    "command",
    ["plugins", "plugins sampler", "recipe check", "train", "sample", "sample --sampler ddim"],
)
def test_every_command_stops_at_the_one_line_before_any_work(
    command, trained_run, installed_v01, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = command.split()
    if argv[0] in ("recipe", "train"):
        argv.append(str(write_recipe(tmp_path)))
    if argv[0] == "train":
        argv += ["--out", str(out)]
    if argv[0] == "sample":
        argv[1:1] = [str(trained_run), "-n", "2", "--out", str(out)]
    with single_thread():
        line = error_line(argv, capsys)
    assert line == f"denoisekit: error: {ENTRY_POINT}: {V01_PROBLEM}"
    assert not out.exists()  # nothing was written


def test_every_builtin_declares_its_class_and_matches_its_contract():
    registry = load_registry(autoload=False)
    for entry in registry.entries():
        product = declared_product(entry.spec.build)
        assert product is not None, f"{entry.label}: build declares no class to check"
        assert signature_problems(entry.kind, product) == [], entry.label


# --------------------------------------------------------------------------- where it is caught

UNANNOTATED = SAMPLER_V01.replace("build=build_ddim,", "build=lambda c: DDIMSampler(c),")


def _module(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / f"{name}.py").write_text(text, encoding="utf-8")
    return name


def test_an_unannotated_factory_is_checked_on_its_probe(tmp_path):
    text = UNANNOTATED.replace('name="ddim-v01",', 'name="ddim-v01", probe={"steps": 2},')
    name = _module(tmp_path, "probed_v01", text)
    with pytest.raises(RegistryError) as info:
        load_registry(plugins=[name], search_paths=[tmp_path], autoload=False)
    sys.modules.pop(name, None)
    assert str(info.value) == f"plugin 'probed_v01' (recipe): {V01_PROBLEM}"


def test_an_unannotated_factory_without_probe_is_checked_when_built(tmp_path, capsys):
    name = _module(tmp_path, "lazy_v01", UNANNOTATED)
    registry = load_registry(plugins=[name], search_paths=[tmp_path], autoload=False)
    with pytest.raises(ComponentError) as info:
        registry.build("sampler", "ddim-v01")
    assert str(info.value) == f"plugin 'lazy_v01' (recipe): {V01_PROBLEM}"
    # A run that uses it stops there: before its folder is made, before any step.
    recipe = write_recipe(tmp_path, {"plugins": [name], "sampler": {"type": "ddim-v01"}})
    out = tmp_path / "run"
    with single_thread():
        line = error_line(["train", str(recipe), "--out", str(out)], capsys)
    sys.modules.pop(name, None)
    assert line == f"denoisekit: error: plugin 'lazy_v01' (recipe): {V01_PROBLEM}"
    assert not out.exists()


# --------------------------------------------------------------------------- the comparison


def _problems(kind: str, cls: type) -> list[str]:
    return signature_problems(kind, cls)


class Net(nn.Module):
    def forward(self, x, timesteps, y=None):  # other names: the host passes them positionally
        return x


class NetWithoutCond(nn.Module):
    def forward(self, x_t, t):
        return x_t


class NetNeedingMore(nn.Module):
    def forward(self, x_t, t, cond=None, *, scale):
        return x_t


class LossAnyPositional:
    prediction_type = "eps"

    def __call__(self, out, x0, noise, t):  # the host passes x0, noise and t by name
        return out


class LossWithoutT:
    prediction_type = "eps"

    def __call__(self, out, *, x0, noise):
        return out


class MetricWithoutContext:
    def __call__(self):
        return {}


class DataWithoutIndex:
    def __len__(self):
        return 1

    def __getitem__(self):
        return None


class OptimizerWithoutSetToNone:
    def step(self):
        pass

    def zero_grad(self):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        pass


class ScheduleLoadingNothing:
    def step(self):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self):
        pass


class FlexibleSampler:
    @staticmethod
    def num_evaluations(num_timesteps):
        return 1

    def sample(self, *args: Any, **kwargs: Any):
        return args[1]


class SamplerWithRequiredExtra:
    def num_evaluations(self, num_timesteps):
        return 1

    def sample(self, denoiser, x_T, *, generator, cond=None, callback=None, guidance):
        return x_T


@pytest.mark.parametrize(
    ("kind", "cls", "expected"),
    [
        ("backbone", Net, None),
        ("backbone", NetWithoutCond, "cannot be called as (x_t, t, cond): too many positional"),
        ("backbone", NetNeedingMore, "missing a required argument: 'scale'"),
        ("loss", LossAnyPositional, None),
        ("loss", LossWithoutT, "got an unexpected keyword argument 't'"),
        ("metric", MetricWithoutContext, "cannot be called as (context): too many positional"),
        ("data", DataWithoutIndex, "__getitem__() does not match"),
        ("optimizer", torch.optim.SGD, None),
        ("optimizer", OptimizerWithoutSetToNone, "unexpected keyword argument 'set_to_none'"),
        ("lr_schedule", torch.optim.lr_scheduler.LambdaLR, None),
        ("lr_schedule", ScheduleLoadingNothing, "cannot be called as (state_dict)"),
        ("sampler", FlexibleSampler, None),
        ("sampler", SamplerWithRequiredExtra, "missing a required argument: 'guidance'"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_each_kind_is_compared_with_its_contract(kind, cls, expected):
    problems = _problems(kind, cls)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0], problems
        assert problems[0].startswith(f"{cls.__name__}.")
        assert "the contract is unchanged since 0.1.0: see docs/writing-a-plugin.md" in (
            problems[0]
        ) or kind == "sampler"


def test_a_built_instance_is_compared_like_its_class():
    assert signature_problems("backbone", NetWithoutCond()) == _problems(
        "backbone", NetWithoutCond
    )
    assert signature_problems("backbone", Net()) == []


def test_a_contract_name_elsewhere_is_a_mismatch_even_where_python_would_bind():
    def contract(denoiser, x_T, /, *, generator, cond=None, callback=None): ...

    def swapped(x_T, denoiser, *, generator, cond=None, callback=None): ...

    reason = mismatch(inspect.signature(contract), inspect.signature(swapped))
    assert reason == (
        "'denoiser' is positional second here, but the host passes it first, positionally"
    )


def test_methods_without_a_signature_are_trusted():
    assert signature_problems("data", list) == []  # C slots: nothing to read


def test_the_registry_names_the_plugin_the_component_and_the_method():
    @attrs.frozen
    class Cfg:
        pass

    class Metric(MetricWithoutContext):
        def __init__(self, config: Cfg) -> None:
            self.config = config

    spec = ComponentSpec(kind="metric", name="m", config=Cfg, build=Metric)
    with pytest.raises(RegistryError, match=r"plugin 'p' \(api\): metric 'm' breaks the metric "
                       r"contract: Metric.__call__\(\) does not match"):
        Registry([RegisteredComponent(spec=spec, plugin="p", source="api")])
