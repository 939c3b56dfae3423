"""The checkpoint hook: files, pruning, last.pt, exact resume, interrupts."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import MethodType, SimpleNamespace

import pytest
import torch

from denoisekit import hookimpl
from denoisekit.engine.checkpoint import load_checkpoint
from denoisekit.engine.loop import TrainingInterrupted, resume_from, train
from denoisekit.engine.run import Run
from denoisekit.files import RunPaths
from denoisekit.host.plugin_manager import get_plugin_manager
from denoisekit.plugins.hooks.checkpoint import CheckpointConfig, CheckpointHook
from tests.plugins.hook_runs import Poison, single_thread, tiny_recipe, tiny_run


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    yield from single_thread()


# --------------------------------------------------------------------------- files


def _fake_run(out_dir: Path, step: int = 0) -> SimpleNamespace:
    run = SimpleNamespace(
        out_dir=out_dir,
        paths=RunPaths(out_dir),
        step=step,
        hooks={},
        state=SimpleNamespace(generator=torch.Generator()),
        batches=SimpleNamespace(state_dict=lambda: {"epoch": 0, "position": 0}),
    )
    run.state_dict = lambda: {"step": run.step, "payload": torch.full((4,), float(run.step))}
    run.pm = get_plugin_manager(builtins=False, autoload=False)
    for name in (
        "optimizer_step_skipped",
        "draw_state",
        "save_checkpoint",
        "remove_stale_temporaries",
    ):
        setattr(run, name, MethodType(getattr(Run, name), run))
    return run


def _step_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("step-"))


def test_keeps_the_newest_k_and_links_last(tmp_path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    # From an earlier, abandoned branch of the run: a step beyond the resumed one.
    (folder / "step-00000009.pt").write_bytes(b"later")
    run = _fake_run(tmp_path, step=0)
    hook = CheckpointHook(CheckpointConfig(every=2, keep=2))
    hook.denoisekit_configure(run=run)
    hook.denoisekit_train_start(run=run)
    for step in range(1, 8):
        run.step = step
        gen = hook.denoisekit_train_step_end(run=run, step=step, loss=torch.tensor(0.5))
        next(gen)  # a pluggy wrapper: run up to its yield, then finish
        with pytest.raises(StopIteration):
            gen.send(None)
    hook.denoisekit_train_end(run=run)  # step 7 is not a multiple of 2: written at the end
    assert _step_files(folder) == ["step-00000006.pt", "step-00000007.pt", "step-00000009.pt"]
    last = folder / "last.pt"
    assert os.path.samefile(last, folder / "step-00000007.pt") or (
        last.read_bytes() == (folder / "step-00000007.pt").read_bytes()
    )
    assert load_checkpoint(last)["step"] == 7
    assert torch.equal(
        load_checkpoint(folder / "step-00000006.pt")["payload"], torch.full((4,), 6.0)
    )
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left
    assert hook.last_checkpoint == folder / "step-00000007.pt"


def test_non_finite_loss_is_not_checkpointed(tmp_path) -> None:
    run = _fake_run(tmp_path, step=2)
    hook = CheckpointHook(CheckpointConfig(every=1))
    hook.denoisekit_configure(run=run)
    assert hook.save(run, loss=torch.tensor(float("nan"))) is None
    assert not (tmp_path / "checkpoints").exists()
    assert hook.save(run, loss=torch.tensor(1.0)) == tmp_path / "checkpoints" / "step-00000002.pt"


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ValueError, match="every"):
        CheckpointConfig(every=0)
    with pytest.raises(ValueError, match="keep"):
        CheckpointConfig(keep=0)
    assert CheckpointConfig(keep=None).keep is None


# --------------------------------------------------------------------------- resume

HOOKS = {"ema": {"decay": 0.9}}


def _state(run) -> dict[str, torch.Tensor]:
    """Every tensor a resumed run must reproduce: weights, EMA, optimizer moments."""
    out = {f"model.{k}": v for k, v in run.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in run.hooks["ema"].model.state_dict().items()})
    for i, slot in run.optimizer.state_dict()["state"].items():
        for k, v in slot.items():
            out[f"opt.{i}.{k}"] = torch.as_tensor(v)
    return out


def _assert_identical(a, b) -> None:
    assert a.step == b.step
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """2N = 4 steps in one go, keeping every checkpoint."""
    folder = tmp_path_factory.mktemp("ckpt")
    hooks = {**HOOKS, "checkpoint": {"every": 2, "keep": 10}}
    run = tiny_run(folder, tiny_recipe(folder, steps=4, hooks=hooks))
    train(run)
    return run


def test_periodic_and_final_files(uninterrupted) -> None:
    folder = uninterrupted.out_dir / "checkpoints"
    assert _step_files(folder) == ["step-00000002.pt", "step-00000004.pt"]
    assert load_checkpoint(folder / "last.pt")["step"] == 4


def test_resume_gives_bit_identical_weights(uninterrupted, tmp_path) -> None:
    """N steps (the step-2 checkpoint), resume, N more == 2N uninterrupted."""
    run = tiny_run(tmp_path, uninterrupted.recipe, out="resumed")
    resume_from(run, uninterrupted.out_dir / "checkpoints" / "step-00000002.pt")
    assert run.step == 2
    train(run)
    _assert_identical(run, uninterrupted)


class _Interrupter:
    """Interrupts the forward pass (after its batch and noise are drawn) of one step."""

    def __init__(self, at_step: int, how: str) -> None:
        self.at_step, self.how = at_step, how

    @hookimpl(tryfirst=True)
    def denoisekit_train_forward(self, run):
        if run.step + 1 == self.at_step:
            if self.how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)  # the core turns it into an exception
            raise KeyboardInterrupt


def test_sigterm_mid_step_writes_an_exactly_resumable_checkpoint(uninterrupted, tmp_path) -> None:
    recipe = tiny_recipe(tmp_path, steps=4, hooks={**HOOKS, "checkpoint": {"every": 100}})
    run = tiny_run(tmp_path, recipe, out="killed", extra_hooks=(_Interrupter(3, "sigterm"),))
    with pytest.raises(TrainingInterrupted):
        train(run)
    folder = run.out_dir / "checkpoints"
    assert _step_files(folder) == ["step-00000002.pt"]
    # The interrupted step had drawn a batch and noise: the checkpoint must not count them.
    assert run.batches.position == 3
    assert load_checkpoint(folder / "last.pt")["data"]["position"] == 2

    resumed = tiny_run(tmp_path, recipe, out="resumed")
    resume_from(resumed, folder / "last.pt")
    train(resumed)
    _assert_identical(resumed, uninterrupted)


class _OptimizerInterrupter:
    @hookimpl(tryfirst=True)
    def denoisekit_optimizer_step(self, run):
        if run.step + 1 == 2:
            raise KeyboardInterrupt


def test_interrupt_inside_the_optimizer_update_writes_nothing(tmp_path, caplog) -> None:
    recipe = tiny_recipe(tmp_path, steps=3, hooks={"checkpoint": {"every": 1}})
    run = tiny_run(tmp_path, recipe, extra_hooks=(_OptimizerInterrupter(),))
    with pytest.raises(KeyboardInterrupt):
        train(run)
    folder = run.out_dir / "checkpoints"
    assert _step_files(folder) == ["step-00000001.pt"]
    assert load_checkpoint(folder / "last.pt")["step"] == 1
    assert "half-updated" in caplog.text


def test_without_the_guard_non_finite_steps_are_not_checkpointed(tmp_path, caplog) -> None:
    recipe = tiny_recipe(tmp_path, steps=3, hooks={"checkpoint": {"every": 1}})
    run = tiny_run(tmp_path, recipe, extra_hooks=(Poison(from_step=2),))
    train(run)  # no guard: the run goes on, with NaN weights from step 2
    folder = run.out_dir / "checkpoints"
    assert _step_files(folder) == ["step-00000001.pt"]
    assert load_checkpoint(folder / "last.pt")["step"] == 1
    assert "step 2: loss is not finite: not written" in caplog.text
