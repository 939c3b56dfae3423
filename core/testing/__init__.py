"""Testing kit for denoisekit components, the built-ins' and third-party plugins' alike.

* :mod:`denoisekit.testing.conformance`: plain check functions (``check_sampler``,
  ``check_backbone``, ``check_schedule``, ``check_loss``, ``check_optimizer``,
  ``check_lr_schedule``, ``check_hook``, ``check_component``) raising ``AssertionError``;
* :class:`ComponentConformance`: a pytest test class; subclass it with ``plugins = [...]``
  and the conformance suites (and a tiny training run per component) run on your
  components;
* tiny recipes: :data:`TINY_RECIPE`, :func:`write_recipe`, :func:`train_tiny`;
* a pytest plugin: ``pytest -p denoisekit.testing`` (or ``addopts = "-p denoisekit.testing"``
  in your pytest configuration) adds the fixtures ``pm`` (a fresh plugin manager),
  ``registry`` (the built-ins) and ``tiny_recipe`` (writes tiny recipes into ``tmp_path``).

See docs/writing-a-plugin.md. pytest is needed only for the class and the fixtures.
"""

from __future__ import annotations

from denoisekit.testing.conformance import (
    CHECKS,
    ToyBackbone,
    check_backbone,
    check_component,
    check_config_roundtrip,
    check_hook,
    check_loss,
    check_lr_schedule,
    check_optimizer,
    check_sampler,
    check_schedule,
    default_config,
    single_thread,
    spec_id,
    toy_schedule,
)
from denoisekit.testing.recipes import TINY_RECIPE, TINY_UNET, train_tiny, write_recipe

__all__ = [
    "CHECKS",
    "TINY_RECIPE",
    "TINY_UNET",
    "ToyBackbone",
    "check_backbone",
    "check_component",
    "check_config_roundtrip",
    "check_hook",
    "check_loss",
    "check_lr_schedule",
    "check_optimizer",
    "check_sampler",
    "check_schedule",
    "default_config",
    "single_thread",
    "spec_id",
    "toy_schedule",
    "train_tiny",
    "write_recipe",
]

try:
    import pytest  # noqa: F401
except ImportError:  # the check functions work without pytest
    pass
else:
    # The pytest plugin: pytest finds the fixtures as attributes of this module.
    from denoisekit.testing.fixtures import pm, registry, tiny_recipe
    from denoisekit.testing.suite import Case, ComponentConformance

    __all__ += ["Case", "ComponentConformance", "pm", "registry", "tiny_recipe"]
