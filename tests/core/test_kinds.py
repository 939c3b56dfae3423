"""Kinds described once: every per-kind table derives from the Kind records; optional
attributes come from the Protocols; ``build=Class``; ``denoisekit.build``; the metric context."""

from __future__ import annotations

import inspect
import typing
from typing import Any

import attrs
import pytest
import torch

import denoisekit
from denoisekit import KIND_RECORDS, ComponentSpec, hookimpl, option
from denoisekit.contracts import KIND, Backbone, Hook, Metric, MetricContext, optional
from denoisekit.engine.evaluation import EvalContext
from denoisekit.errors import RecipeError, RegistryError
from denoisekit.host import contract_checks
from denoisekit.host.plugin_manager import get_plugin_manager
from denoisekit.host.recipe import (
    DEFAULT_TYPES,
    MULTI_KINDS,
    OPTIONAL_KINDS,
    SINGLE_KINDS,
    TOP_KEYS,
    Recipe,
)
from denoisekit.host.registry import Registry
from denoisekit.testing import write_recipe
from denoisekit.testing.conformance import CHECKS
from denoisekit.testing.suite import RUN_KINDS


def test_every_table_agrees_with_the_kind_records() -> None:
    names = tuple(k.name for k in KIND_RECORDS)
    assert denoisekit.KINDS == names == tuple(KIND)
    assert names == ("data", "autoencoder", "schedule", "backbone", "loss", "optimizer",
                     "lr_schedule", "sampler", "hook", "metric")  # fmt: skip
    assert tuple(k.name for k in KIND_RECORDS if k.probed) == denoisekit.PROBE_KINDS
    assert {k.name: k.context for k in KIND_RECORDS} == denoisekit.BUILD_CONTEXT
    assert tuple(k.name for k in KIND_RECORDS if not k.many) == SINGLE_KINDS
    assert MULTI_KINDS == {"hooks": "hook", "metrics": "metric"}
    assert {k.name: k.default for k in KIND_RECORDS if k.default is not None} == DEFAULT_TYPES
    assert "data" not in DEFAULT_TYPES  # a recipe must say which data
    assert OPTIONAL_KINDS == ("autoencoder",)  # left out: pixel space, no autoencoder
    assert not any(k.optional and (k.default or k.many) for k in KIND_RECORDS)
    assert set(RUN_KINDS) == {k.name for k in KIND_RECORDS if k.runs}
    assert set(CHECKS) == {*RUN_KINDS, "autoencoder"}  # runs do not take autoencoders yet
    assert set(contract_checks.PROBES) == set(denoisekit.PROBE_KINDS)
    assert {*SINGLE_KINDS, *MULTI_KINDS} <= set(TOP_KEYS)
    fields = attrs.fields_dict(Recipe)
    for kind in KIND_RECORDS:
        assert kind.table in fields, kind
        assert kind.table == (kind.name if not kind.many else f"{kind.name}s")


def test_kind_methods_are_declared_by_their_protocols() -> None:
    for kind in KIND_RECORDS:
        assert isinstance(kind.protocol, type) and typing.Protocol in kind.protocol.__mro__
        for method in kind.methods:
            assert callable(getattr(kind.protocol, method, None)), (kind.name, method)


def test_optional_attributes_default_from_the_protocol() -> None:
    class Bare:
        pass

    class Conditional:
        time_input = "log_snr"
        num_classes = 10

    assert optional(Bare(), Backbone, "time_input") == "timestep"
    assert optional(Bare(), Backbone, "num_classes") is None
    assert optional(Conditional(), Backbone, "time_input") == "log_snr"
    assert optional(Conditional(), Backbone, "num_classes") == 10
    assert optional(Bare(), Hook, "rank_zero_only") is False
    assert optional(Bare(), Metric, "requires_model") is False
    assert optional(Bare(), Metric, "uses_samples") is True
    with pytest.raises(AttributeError):  # only declared attributes have a default
        optional(Bare(), Backbone, "undeclared")


# --------------------------------------------------------------------------- build=Class


@attrs.frozen(kw_only=True)
class StepsConfig:
    steps: int = option(3, "steps")


class ClassSampler:
    """A sampler whose class is its factory: ``build=ClassSampler``."""

    def __init__(self, config: StepsConfig) -> None:
        self.config = config

    def num_evaluations(self, num_timesteps: int) -> int:
        return self.config.steps

    def sample(self, denoiser: Any, x_T: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(x_T)


class NoSample:
    def __init__(self, config: StepsConfig) -> None:
        self.config = config


class Provider:
    def __init__(self, *specs: ComponentSpec) -> None:
        self.specs = specs

    @hookimpl
    def denoisekit_components(self) -> list[ComponentSpec]:
        return list(self.specs)


def _registry(*specs: ComponentSpec) -> Registry:
    pm = get_plugin_manager(builtins=False, autoload=False)
    pm.register_named(Provider(*specs), "classes", "api")
    return Registry.from_plugin_manager(pm)


def test_a_class_is_a_factory() -> None:
    spec = ComponentSpec(kind="sampler", name="cls", config=StepsConfig, build=ClassSampler)
    registry = _registry(spec)
    built = registry.build("sampler", "cls", StepsConfig(steps=7))
    assert isinstance(built, ClassSampler) and built.num_evaluations(100) == 7
    built = denoisekit.build("sampler", "cls", registry=registry, steps=5)
    assert isinstance(built, ClassSampler) and built.config.steps == 5


def test_a_class_factory_is_checked_from_the_class_itself() -> None:
    spec = ComponentSpec(kind="sampler", name="nosample", config=StepsConfig, build=NoSample)
    assert contract_problems_of(spec) == [
        "NoSample has no sample() or num_evaluations(); a sampler needs sample(denoiser, x_T, "
        "*, generator, cond, callback) and num_evaluations(num_timesteps)"
    ]
    with pytest.raises(RegistryError, match=r"sampler 'nosample' breaks the sampler contract"):
        _registry(spec)
    wrong = ComponentSpec(kind="loss", name="l", config=StepsConfig, build=ClassSampler)
    assert contract_problems_of(wrong)[0].startswith("build must accept (config, schedule=...)")


def contract_problems_of(spec: ComponentSpec) -> list[str]:
    return contract_checks.contract_problems(spec)


def test_builtins_whose_builder_only_called_the_class_register_the_class() -> None:
    registry = denoisekit.host.registry.load_registry(autoload=False)
    for kind, name in [("backbone", "unet"), ("hook", "ema"), ("metric", "fd")]:
        assert isinstance(registry.get(kind, name).spec.build, type), (kind, name)


# --------------------------------------------------------------------------- denoisekit.build


def test_build_a_builtin_by_name() -> None:
    sampler = denoisekit.build("sampler", "ddim", steps=20)
    assert sampler.config.steps == 20 and sampler.num_evaluations(1000) == 20
    schedule = denoisekit.build("schedule", "linear", num_timesteps=100)
    assert schedule.num_timesteps == 100
    loss = denoisekit.build("loss", "mse", schedule=schedule, prediction="v")
    assert loss.prediction_type == "v"
    assert "build" in denoisekit.__all__ and denoisekit.build.__module__ == "denoisekit.host.build"


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: denoisekit.build("sampler", "ddim", stepz=2), RecipeError,
         "sampler 'ddim': sampler.stepz: unknown key (did you mean 'steps'?)"),
        (lambda: denoisekit.build("sampler", "ddim", steps=0), RecipeError,
         "sampler 'ddim': sampler.steps: 'steps' must be"),
        (lambda: denoisekit.build("sampler", "ddmi"), RegistryError,
         "unknown sampler 'ddmi' (did you mean 'ddim'?)"),
        (lambda: denoisekit.build("samplers", "ddim"), RegistryError,
         "unknown component kind 'samplers' (did you mean 'sampler'?)"),
        (lambda: denoisekit.build("loss", "mse"), RegistryError,
         "building a loss needs schedule=... (its build context)"),
        (lambda: denoisekit.build("schedule", "cosine", timesteps=10), RecipeError,
         "schedule.timesteps: renamed to num_timesteps: rename the key"),
        (lambda: denoisekit.build("metric", "nll", timesteps=10), RecipeError,
         "metric.timesteps: renamed to steps: rename the key"),
        (lambda: denoisekit.build("sampler", "ddim", timesteps=10), RecipeError,
         "sampler.timesteps: unknown key"),  # renames are per kind
    ],
)  # fmt: skip
def test_build_errors_are_one_line(call, error, message) -> None:
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- renamed option


def test_a_recipe_still_using_timesteps_is_told_to_rename_it(tmp_path) -> None:
    from denoisekit.host.recipe import load_recipe

    path = write_recipe(tmp_path, {"schedule": {"type": "cosine", "num_timesteps": 100}})
    text = path.read_text().replace("num_timesteps = 100", "timesteps = 100")
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == (
        f"{path}: schedule.timesteps: renamed to num_timesteps: rename the key"
    )
    with pytest.raises(RecipeError, match=r"schedule\.timesteps: renamed to num_timesteps: "
                       r"rename the key \(set by --set\)"):  # fmt: skip
        load_recipe(write_recipe(tmp_path / "b"), ["schedule.timesteps=50"])


def test_a_recipe_still_using_the_nll_timesteps_is_told_to_rename_it(tmp_path) -> None:
    from denoisekit.host.recipe import load_recipe

    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path), ["metrics.nll.timesteps=20"])
    assert "metrics.nll.timesteps: renamed to steps: rename the key" in str(info.value)


# --------------------------------------------------------------------------- metric context


def _members(protocol: type) -> dict[str, Any]:
    skip = {"__init__", "__subclasshook__", "__class_getitem__", "__init_subclass__"}
    members = {
        n: v for n, v in vars(protocol).items() if not n.startswith("_") and n not in skip
    }
    members.update(dict.fromkeys(protocol.__annotations__))
    return members


def test_eval_context_is_a_metric_context() -> None:
    context = EvalContext()
    members = _members(MetricContext)
    assert {"samples", "sample_images", "draw", "reference_images", "reference_data",
            "reference_key", "denoiser", "require_run", "device", "seed", "batch_size",
            "cache_dir", "recipe", "registry"} <= set(members)  # fmt: skip
    for name, declared in members.items():
        assert hasattr(EvalContext, name) or name in attrs.fields_dict(EvalContext), name
        if inspect.isfunction(declared):
            wanted = list(inspect.signature(declared).parameters)
            got = list(inspect.signature(getattr(EvalContext, name)).parameters)
            assert got[: len(wanted)] == wanted, (name, got, wanted)
    assert context.device == torch.device("cpu")
