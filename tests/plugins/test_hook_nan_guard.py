"""The NaN guard: stops on a non-finite loss before any other step-end hook runs."""

from __future__ import annotations

from types import MethodType, SimpleNamespace

import pytest
import torch

from denoisekit import hookimpl
from denoisekit.engine.checkpoint import load_checkpoint
from denoisekit.engine.loop import train
from denoisekit.engine.run import Run
from denoisekit.errors import NonFiniteLossError
from denoisekit.host.plugin_manager import get_plugin_manager
from denoisekit.plugins.hooks.nan_guard import NaNGuardConfig, NaNGuardHook
from tests.plugins.hook_runs import Poison, single_thread, tiny_recipe, tiny_run


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    yield from single_thread()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path) -> None:
    hooks = {"ema": {"decay": 0.9}, "checkpoint": {"every": 1}, "nan-guard": {}}
    recipe = tiny_recipe(tmp_path, steps=5, hooks=hooks)
    run = tiny_run(tmp_path, recipe, extra_hooks=(Poison(from_step=3),))
    with pytest.raises(NonFiniteLossError) as info:
        train(run)
    folder = run.out_dir / "checkpoints"
    message = str(info.value)
    assert message.startswith("step 3: loss is nan; the last good checkpoint is ")
    assert str(folder / "step-00000002.pt") in message
    assert message.endswith("lower optimizer.lr or set train.grad_clip")
    assert sorted(p.name for p in folder.glob("step-*.pt")) == [
        "step-00000001.pt",
        "step-00000002.pt",
    ]
    assert load_checkpoint(folder / "last.pt")["step"] == 2
    # The guard found it through the hookspec the checkpoint hook answers.
    assert run.pm.hook.denoisekit_last_checkpoint(run=run) == folder / "step-00000002.pt"
    # The guard ran before the EMA update of step 3 (the weights are NaN by then).
    assert not all(torch.isfinite(p).all() for p in run.model.parameters())
    assert all(torch.isfinite(p).all() for p in run.hooks["ema"].model.parameters())


def _fake_run(hooks: dict | None = None, grad_clip: float | None = None) -> SimpleNamespace:
    recipe = SimpleNamespace(train=SimpleNamespace(grad_clip=grad_clip))
    pm = get_plugin_manager(plugins=list((hooks or {}).values()), builtins=False, autoload=False)
    run = SimpleNamespace(hooks=hooks or {}, recipe=recipe, pm=pm, is_main=True)
    run.optimizer_step_skipped = MethodType(Run.optimizer_step_skipped, run)
    return run


def _step_end(hook: NaNGuardHook, run, step: int, loss: float) -> None:
    gen = hook.denoisekit_train_step_end(run=run, step=step, loss=torch.tensor(loss))
    next(gen)  # raises here when the guard fires; else the other impls would run


def test_checks_only_every_n_steps_and_names_inf() -> None:
    hook = NaNGuardHook(NaNGuardConfig(every=2))
    run = _fake_run(grad_clip=1.0)
    _step_end(hook, run, 1, float("nan"))  # not a checked step
    with pytest.raises(NonFiniteLossError) as info:
        _step_end(hook, run, 2, float("inf"))
    assert str(info.value) == (
        "step 2: loss is inf; no checkpoints are written (add [hooks.checkpoint]); "
        "lower optimizer.lr or train.grad_clip (now 1.0)"
    )


class _FakeAMP:
    def __init__(self, skipped: bool) -> None:
        self.skipped = skipped

    @hookimpl
    def denoisekit_optimizer_step_skipped(self, run) -> torch.Tensor:
        return torch.tensor(self.skipped)


def test_tolerates_scaler_skipped_steps_up_to_a_limit() -> None:
    hook = NaNGuardHook(NaNGuardConfig(amp_max_skipped=2))
    run = _fake_run({"amp": _FakeAMP(skipped=True)})
    _step_end(hook, run, 1, float("nan"))
    _step_end(hook, run, 2, float("inf"))
    _step_end(hook, run, 3, 0.5)  # a clean step resets the count
    _step_end(hook, run, 4, float("nan"))
    _step_end(hook, run, 5, float("nan"))
    with pytest.raises(NonFiniteLossError, match="skipped 3 steps in a row"):
        _step_end(hook, run, 6, float("nan"))
    # Not skipped by the scaler: raises at once.
    with pytest.raises(NonFiniteLossError, match="step 1: loss is nan"):
        _step_end(
            NaNGuardHook(NaNGuardConfig()), _fake_run({"amp": _FakeAMP(False)}), 1, float("nan")
        )


class _Saver:
    """A checkpoint-writing plugin, known to the guard only by its hook implementation."""

    def __init__(self, newest) -> None:
        self.newest = newest

    @hookimpl
    def denoisekit_last_checkpoint(self):
        return self.newest


def test_names_the_last_checkpoint_its_hookspec_answers(tmp_path) -> None:
    newest = tmp_path / "step-00000004.pt"
    run = _fake_run({"saver": _Saver(newest)})
    run.hooks = {}  # not looked up among the hooks: asked through the run manager
    with pytest.raises(NonFiniteLossError) as info:
        _step_end(NaNGuardHook(NaNGuardConfig()), run, 5, float("nan"))
    assert f"step 5: loss is nan; the last good checkpoint is {newest}; " in str(info.value)
    with pytest.raises(NonFiniteLossError, match="; no checkpoint has been written yet; "):
        _step_end(NaNGuardHook(NaNGuardConfig()), _fake_run({"saver": _Saver(None)}), 1, 1e999)


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ValueError, match="every"):
        NaNGuardConfig(every=0)
    with pytest.raises(ValueError, match="amp_max_skipped"):
        NaNGuardConfig(amp_max_skipped=-1)
