"""The compile hook: the training forward runs through torch.compile; checkpoints stay raw."""

from __future__ import annotations

import pytest
import torch

from denoisekit.engine.loop import train
from denoisekit.plugins.hooks.compile import CompileConfig, CompileHook
from tests.plugins.hook_runs import single_thread, tiny_recipe, tiny_run


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    yield from single_thread()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, {"fullgraph": False, "backend": "inductor", "mode": "default"}),
        (
            {"mode": "max-autotune", "fullgraph": True, "dynamic": "false"},
            {"fullgraph": True, "backend": "inductor", "mode": "max-autotune", "dynamic": False},
        ),
        (
            {"backend": "eager", "dynamic": "true"},
            {"fullgraph": False, "backend": "eager", "dynamic": True},
        ),
    ],
)
def test_options_map_to_torch_compile_arguments(monkeypatch, options, expected) -> None:
    seen = {}

    def fake_compile(model, **kwargs):
        seen.update(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    CompileHook(CompileConfig(**options)).compile(torch.nn.Linear(1, 1))
    assert seen == expected


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ValueError, match="dynamic"):
        CompileConfig(dynamic="maybe")
    with pytest.raises(ValueError, match="mode"):
        CompileConfig(mode="fast")


def _compiled_and_plain(tmp_path, backend: str, steps: int = 2):
    torch._dynamo.reset()
    hooks = {"compile": {"backend": backend}}
    compiled = tiny_run(tmp_path, tiny_recipe(tmp_path, steps=steps, hooks=hooks), out="compiled")
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    train(compiled)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - before
    plain_recipe = tiny_recipe(tmp_path, steps=steps, name="plain")
    plain = tiny_run(tmp_path, plain_recipe, out="plain")
    train(plain)
    return compiled, plain, graphs


def _check_checkpoint_loads_without_compile(compiled, plain) -> None:
    state = compiled.state_dict()
    assert not [k for k in state["model"] if "_orig_mod" in k]
    plain.load_state_dict(state)
    for k, v in compiled.model.state_dict().items():
        assert torch.equal(plain.model.state_dict()[k], v), k


def test_compiles_the_training_forward_and_checkpoints_load_without_it(tmp_path) -> None:
    # The "eager" backend traces with TorchDynamo without generating code: fast on a CPU.
    compiled, plain, graphs = _compiled_and_plain(tmp_path, "eager")
    assert compiled.train_model is not compiled.model
    assert compiled.train_model._orig_mod is compiled.model
    assert graphs >= 1  # the forward went through TorchDynamo
    # Same math as without compile: bit-identical weights after the same steps.
    for k, v in plain.model.state_dict().items():
        assert torch.equal(compiled.model.state_dict()[k], v), k
    _check_checkpoint_loads_without_compile(compiled, plain)


@pytest.mark.slow
def test_inductor_trains_like_the_uncompiled_model(tmp_path) -> None:
    """Generates C++ kernels: minutes on a small CPU."""
    compiled, plain, graphs = _compiled_and_plain(tmp_path, "inductor")
    assert graphs >= 1
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(compiled.model.state_dict()[k], v, rtol=1e-3, atol=1e-4)
    _check_checkpoint_loads_without_compile(compiled, plain)
