"""The progress hook: plain lines when stdout is not a terminal, a tqdm bar when it is."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest

from denoisekit.engine.loop import train
from denoisekit.plugins.hooks.progress import ProgressConfig, ProgressHook, format_line
from tests.plugins.hook_runs import single_thread, tiny_recipe, tiny_run


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    yield from single_thread()


def test_format_line() -> None:
    scalars = {"loss": 0.05123, "lr": 2e-4, "images_per_sec": 311.8, "grad_norm": 1.0}
    assert format_line(100, 1000, scalars) == "step 100/1000 loss 0.0512 lr 2.0e-04 312 img/s"
    assert format_line(3, 9, {}) == "step 3/9"


def test_plain_lines_when_stdout_is_not_a_terminal(tmp_path, capsys) -> None:
    recipe = tiny_recipe(tmp_path, steps=4, hooks={"progress": {}})
    run = tiny_run(tmp_path, recipe)
    train(run)
    lines = capsys.readouterr().out.splitlines()
    pattern = r"step {}/4 loss \d+\.\d{{4}} lr 2\.0e-04 \d+ img/s"
    assert len(lines) == 2
    assert re.fullmatch(pattern.format(2), lines[0])
    assert re.fullmatch(pattern.format(4), lines[1])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drive(hook: ProgressHook) -> None:
    run = SimpleNamespace(total_steps=4, step=0)
    hook.denoisekit_train_start(run=run)
    for step in range(1, 5):
        run.step = step
        hook.denoisekit_train_step_end(step=step)
        if step % 2 == 0:
            scalars = {"loss": 0.25, "lr": 1e-3, "images_per_sec": 50.0}
            hook.denoisekit_log_scalars(run=run, step=step, scalars=scalars)
    hook.denoisekit_train_end()


def test_a_bar_on_a_terminal() -> None:
    stream = _Terminal()
    hook = ProgressHook(ProgressConfig(), stream=stream)
    _drive(hook)
    out = stream.getvalue()
    assert "4/4" in out and "loss=0.2500" in out and "img/s=50" in out
    assert "step 2/4" not in out
    assert hook.bar is None  # closed


@pytest.mark.parametrize(
    ("bar", "terminal", "expect_bar"),
    [
        ("never", True, False),
        ("always", False, True),
    ],
)
def test_bar_option_overrides_detection(bar, terminal, expect_bar) -> None:
    stream = _Terminal() if terminal else io.StringIO()
    _drive(ProgressHook(ProgressConfig(bar=bar), stream=stream))
    assert ("step 4/4 loss 0.2500" in stream.getvalue()) is not expect_bar


def test_bad_option_names_the_field() -> None:
    with pytest.raises(ValueError, match="bar"):
        ProgressConfig(bar="sometimes")
